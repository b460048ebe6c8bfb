"""A direct, naive implementation of the paper's transferability, density, budget loop and greedy MMD (paper mode), for tests only.

Every kernel is materialised from explicit differences, every candidate's MMD^2 is recomputed from
scratch at every greedy step, and the allocation re-normalises the softmax over the unvisited
clusters literally. Slow (cubic per greedy step); use on small data.
"""
import json
from pathlib import Path
import numpy as np


def text_columns(layout, width):
    cols = np.zeros(width, bool)
    for b in layout['blocks']:
        if b['modality'] == 'text': cols[b['start']:b['stop']] = True
    return np.flatnonzero(cols)


def naive_transferability(centroids, layout):
    """S_i = mean of C_ij over the j with C_ij <= 0.9, C = cosine of the text parts (0 if none left)."""
    T = np.asarray(centroids, np.float64)[:, text_columns(layout, centroids.shape[1])]
    K = len(T)
    S = np.zeros(K)
    for i in range(K):
        vals = []
        for j in range(K):
            ni, nj = np.sqrt((T[i] ** 2).sum()), np.sqrt((T[j] ** 2).sum())
            c = float(T[i] @ T[j] / (ni * nj)) if ni > 0 and nj > 0 else 0.0
            if c <= 0.9: vals.append(c)
        S[i] = np.mean(vals) if vals else 0.0
    return S


def naive_kernel(X, sigma):
    X = np.asarray(X, np.float64)
    return np.exp(-((X[:, None, :] - X[None, :, :]) ** 2).sum(-1) / (2 * sigma ** 2))


def naive_greedy(K, m):
    """Greedy MMD from scratch: every candidate's MMD^2 of the enlarged set; ties -> lowest position.
    Also returns the smallest relative gap between the best and the second-best candidate."""
    n = len(K)
    sel, gap = [], np.inf
    Kxx = K.mean()
    for _ in range(m):
        cands = [c for c in range(n) if c not in sel]
        vals = np.array([Kxx + K[np.ix_(sel + [c], sel + [c])].mean() - 2 * K[:, sel + [c]].mean() for c in cands])
        best = int(np.argmin(vals))
        if len(vals) > 1:
            rest, others = np.delete(vals, best), np.delete(cands, best)
            # duplicates of the best row (equal kernel rows) tie exactly by design and are left out of the gap; an exact tie
            # with a different row (a symmetry of the data, e.g. any two rows when n = 2) is a gap of 0: rounding decides it
            dup = np.array([np.array_equal(K[c], K[cands[best]]) for c in others])
            diff = np.abs(rest - vals[best])[~dup]
            if len(diff): gap = min(gap, diff.min() / max(abs(vals[best]), 1e-300))
        sel.append(cands[best])
    return np.array(sel, np.int64), gap


def naive_select(emb, layout, centroids, assignments, fraction, tau=0.1, sigma=1.0):
    """Paper-mode COINCIDE: returns (sorted selected indices, shortfall, smallest greedy gap)."""
    N = len(emb)
    S_all = naive_transferability(centroids, layout)
    clusters = np.unique(assignments)                       # empty ids dropped
    members = {c: np.flatnonzero(assignments == c) for c in clusters}
    kern = {c: naive_kernel(emb[members[c]], sigma) for c in clusters}
    D = np.array([kern[c].mean() for c in clusters])
    score = S_all[clusters] / D
    e = np.exp(score / tau)
    P = e / np.sum(e)
    order = np.argsort(-P, kind='stable')
    remaining = int(fraction * N)
    chosen, gap = [], np.inf
    for pos, i in enumerate(order):
        rest = order[pos:]                                   # the clusters not yet visited, this one first
        p = P[i] if pos == 0 else (np.exp(score[rest] / tau) / np.sum(np.exp(score[rest] / tau)))[0]
        m = round(remaining * p)
        c = clusters[i]
        if m > len(members[c]): sel = members[c]
        else:
            picks, g = naive_greedy(kern[c], m)
            sel, gap = members[c][picks], min(gap, g)
        chosen.append(sel)
        remaining -= len(sel)
    idx = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    return idx.astype(np.int64), remaining, gap


def load_run(run):
    run = Path(run)
    return (np.load(run/'embeddings.npy'), json.loads((run/'layout.json').read_text()),
            np.load(run/'centroids.npy'), np.load(run/'assignments.npy'))
