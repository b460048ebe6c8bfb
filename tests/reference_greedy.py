"""The greedy MMD of coincide.selection as it was before the predicted batches (commit fce93ef),
frozen for tests with the kernel code it used: the current greedy must make exactly the same picks."""
import numpy as np
from coincide.core import CoincideError
from coincide.kernels import unique_rows


def sq_norms(x:np.ndarray) -> np.ndarray:
    "Squared L2 norm of each row of `x`, in float64."
    x = np.asarray(x, np.float64)
    return np.einsum('ij,ij->i', x, x)                             # (n,)

def gaussian_kernel(a:np.ndarray, # (p, d) float64 rows
                    b:np.ndarray, # (q, d) float64 rows
                    sigma:float=1.0, # kernel bandwidth
                    a_sq:np.ndarray|None=None, b_sq:np.ndarray|None=None, # precomputed squared norms
                   ) -> np.ndarray: # (p, q) float64 k(a_i, b_j)
    "Gaussian kernel exp(-||a - b||^2 / (2 sigma^2)) between two sets of rows, in float64."
    a_sq = sq_norms(a) if a_sq is None else a_sq
    b_sq = sq_norms(b) if b_sq is None else b_sq
    d2 = a @ b.T                                                   # (p, q)
    d2 *= -2.0; d2 += a_sq[:, None]; d2 += b_sq[None, :]
    np.maximum(d2, 0.0, out=d2)
    d2 *= -1.0 / (2.0 * sigma * sigma)
    return np.exp(d2, out=d2)

def weighted_row_sums(u:np.ndarray, # (q, d) float64 distinct rows
                      w:np.ndarray, # (q,) multiplicity of each row
                      sigma:float=1.0, # kernel bandwidth
                      block_entries:int=1<<22, # kernel entries per block (32 MB in float64)
                     ) -> np.ndarray: # (q,) float64 r_a = sum_b w_b k(u_a, u_b)
    "Kernel row sums of distinct rows with multiplicities, one symmetric pass in blocks, never q x q."
    q = len(u); w = np.asarray(w, np.float64)
    sq, r = sq_norms(u), np.zeros(q)
    step = max(32, block_entries // max(q, 1))
    for i0 in range(0, q, step):
        i1 = min(q, i0 + step)
        Kb = gaussian_kernel(u[i0:i1], u[i0:], sigma, sq[i0:i1], sq[i0:])   # (b, q - i0)
        Kb[np.arange(i1 - i0), np.arange(i1 - i0)] = 1.0                     # k(x, x) = 1 exactly
        r[i0:i1] += Kb @ w[i0:]                                              # rows: this block and all later columns
        r[i1:] += w[i0:i1] @ Kb[:, i1 - i0:]                                 # columns of the later blocks (symmetry)
    return r


class _RowCache:
    "Kernel rows k(u_a, .) of distinct rows a, computed in batches and kept within a memory bound."
    def __init__(self, u:np.ndarray, sigma:float, cache_bytes:int):
        self.u, self.sigma, self.sq = u, sigma, sq_norms(u)        # u: (q, d) float64
        q = len(u)
        self.cap = int(max(1, min(q, cache_bytes // (8 * max(q, 1)))))
        self.rows = np.empty((self.cap, q))                       # (cap, q) float64
        self.slot = np.full(q, -1, np.int64)
        self.free = list(range(self.cap))[::-1]
        self.computed = 0

    def fill(self, ids:np.ndarray, f:np.ndarray):
        "Compute and store the rows of `ids` (the first one is needed now), evicting the least promising cached rows."
        ids = ids[:self.cap]
        need = len(ids) - len(self.free)
        if need > 0:
            cached = np.flatnonzero(self.slot >= 0)
            for e in cached[np.argsort(-f[cached], kind='stable')[:need]]: self.drop(e)
        K = gaussian_kernel(self.u[ids], self.u, self.sigma, self.sq[ids], self.sq)   # (b, q)
        K[np.arange(len(ids)), ids] = 1.0                          # k(x, x) = 1 exactly
        for i, a in enumerate(ids):
            s = self.free.pop(); self.slot[a] = s; self.rows[s] = K[i]
        self.computed += len(ids)

    def drop(self, a:int):
        "Forget the row of distinct row `a`."
        if self.slot[a] >= 0: self.free.append(int(self.slot[a])); self.slot[a] = -1

def _next_batch(a:int, f:np.ndarray, cache:_RowCache, size:int) -> np.ndarray:
    "Distinct row `a` followed by up to size-1 uncached candidates with the smallest objective."
    g = f.copy(); g[cache.slot >= 0] = np.inf; g[a] = np.inf      # (q,)
    k = int(min(size - 1, np.isfinite(g).sum()))
    if k <= 0: return np.array([a])
    best = np.argpartition(g, k - 1)[:k] if k < len(g) else np.arange(len(g))
    best = best[np.isfinite(g[best])]
    return np.concatenate([[a], best[np.argsort(g[best], kind='stable')]])

def greedy_distinct(u:np.ndarray, # (q, d) float64 distinct rows of the cluster
                    counts:np.ndarray, # (q,) how many members share each distinct row
                    inv:np.ndarray, # (n,) member position -> distinct row
                    r_u:np.ndarray, # (q,) kernel row sum of each distinct row over all n members
                    m:int, # how many members to pick, 0 <= m <= n
                    sigma:float=1.0, # kernel bandwidth
                    cache_bytes:int=256<<20, # memory for cached kernel rows
                    batch:int=64, # kernel rows computed per BLAS product
                   ) -> np.ndarray: # (m,) int64 member positions in pick order
    "Greedy MMD with running sums over distinct rows; the picks equal the from-scratch greedy's."
    q, n = len(u), int(np.sum(counts))
    members = np.argsort(inv, kind='stable')                      # (n,) members grouped by distinct row, ascending
    ptr = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    left, done = np.asarray(counts, np.int64).copy(), np.zeros(q, bool)
    cache = _RowCache(u, sigma, cache_bytes)
    b, f, tmp = np.zeros(q), np.empty(q), np.empty(q)
    A = R = 0.0
    picks = np.empty(m, np.int64)
    for t in range(m):
        np.multiply(b, 2.0, out=f); f += A + 1.0; f /= float(t + 1) ** 2          # (A + 2 b_c + k(c,c)) / (t+1)^2
        np.add(r_u, R, out=tmp); tmp *= 2.0 / (n * (t + 1)); f -= tmp            # - 2 (R + r_c) / (n (t+1))
        f[done] = np.inf
        a = int(np.argmin(f))
        ties = np.flatnonzero(f == f[a])
        if len(ties) > 1: a = int(ties[np.argmin(members[ptr[ties]])])          # lowest member position
        picks[t] = members[ptr[a]]; ptr[a] += 1; left[a] -= 1
        if cache.slot[a] < 0: cache.fill(_next_batch(a, f, cache, min(batch, m - t + 1)), f)
        A += 2.0 * b[a] + 1.0; R += r_u[a]
        b += cache.rows[cache.slot[a]]
        if left[a] == 0: done[a] = True; cache.drop(a)
    return picks

def greedy_mmd(x:np.ndarray, # (n, d) one cluster's rows, any float dtype
               m:int, # how many to pick, 0 <= m <= n
               sigma:float=1.0, # Gaussian kernel bandwidth
               r:np.ndarray|None=None, # (n,) kernel row sums if already known (from the density pass)
               cache_bytes:int=256<<20, # memory for cached kernel rows
               batch:int=64, # kernel rows per BLAS product
              ) -> np.ndarray: # (m,) int64 member positions in pick order
    "Greedy MMD prototypes of one cluster: the member positions in pick order."
    n = len(x)
    if not 0 <= m <= n: raise CoincideError(f"greedy_mmd: cannot pick {m} of {n} members")
    if sigma <= 0: raise CoincideError(f"greedy_mmd: sigma must be > 0, got {sigma}")
    if m == 0: return np.zeros(0, np.int64)
    first, inv, counts = unique_rows(x)
    u = np.asarray(x[first], np.float64)                           # (q, d)
    r_u = weighted_row_sums(u, counts, sigma) if r is None else np.asarray(r, np.float64)[first]
    return greedy_distinct(u, counts, inv, r_u, m, sigma, cache_bytes, batch)
