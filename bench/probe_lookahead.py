"""Probe why greedy MMD on one large cluster sits near 2 float32 products: where its time goes and how far its look-ahead sees.

    OMP_NUM_THREADS=1 python bench/probe_lookahead.py [--n 20000] [--d 2048] [--m 4000] [--batch 32] [--pool 4096]

Runs `greedy_mmd` on the cluster of `bench_greedy.py` with timers and recorders wrapped around the selection
module's internals (the picks are not touched), and writes to bench/results/greedy_lookahead_bB_pP.json:

- `phases_s` / `phases_products`: the row-sum pass, the batched kernel rows (`fill`, of which the float64 product and
  kernel `fill_kernel`), the look-ahead (`lookahead`, of which its kernel rows `lookahead_rows`), the greedy's own
  steps (`steps`), in seconds and in float32 products `x @ x.T.copy()` timed in the same process before the run;
- `fills`: how many batches, the uncached picks each batch served before the next one was needed, and the pick that
  forced the next batch (`trigger`): whether it was in the look-ahead's pool when the batch was chosen, and its rank
  by the objective then;
- `pool_turnover`: uncached pool members that were not in the previous batch's pool;
- `visited_rank_percentiles`: ranks, among the pool's uncached members ordered by the objective when the batch was
  chosen, of the uncached rows the look-ahead stepped through;
- `picks_sha256`: the hash of the picks (int64 bytes), to check that the probe changed none;
- `row_product_ms`: milliseconds per kernel row of one float64 product of B rows against the cluster's uncached
  rows (B = 32, 64, 128, 256), as the batches compute them, and (B = 32) against a contiguous transposed copy.
"""
import argparse, collections, hashlib, json, os, sys, time
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from bench_greedy import cluster, timed


def wrap(owner, name, key, spent):
    "Replace owner.name by a version that adds its wall time to spent[key]."
    f = getattr(owner, name)
    def timed_call(*a, **kw):
        t = time.perf_counter(); out = f(*a, **kw); spent[key] += time.perf_counter() - t; return out
    setattr(owner, name, timed_call)


def record_pools(S, pools):
    "Record, at each batch, the pool, its uncached members and their ranks by the objective."
    choose = S._look_ahead_pool
    def recorded(a, f, cached, size):
        C = choose(a, f, cached, size)
        unc = C[~cached[C]]
        pools.append({'a': int(a), 'pool': set(C.tolist()), 'uncached': set(unc.tolist()), 'cached': cached.copy(),
                      'rank_all': np.argsort(np.argsort(f, kind='stable'), kind='stable'),
                      'rank_unc': {int(c): i for i, c in enumerate(unc[np.argsort(f[unc], kind='stable')])}, 'visited': []})
        return C
    S._look_ahead_pool = recorded
    row = S._PoolKernel.row
    def visited(self, j):
        if self.sl[j] < 0: pools[-1]['visited'].append(pools[-1]['rank_unc'].get(int(self.C[j]), -1))
        return row(self, j)
    S._PoolKernel.row = visited


def fill_stats(picks, pools):
    "Per batch: uncached picks served before the next batch, and whether the pick that forced it was in the pool."
    step = {int(p): t for t, p in enumerate(picks)}
    served, in_pool, ranks = [], 0, []
    for now, nxt in zip(pools[:-1], pools[1:]):
        t0, t1 = step[now['a']], step[nxt['a']]
        served.append(sum(1 for p in picks[t0 + 1:t1] if not now['cached'][p]))
        in_pool += nxt['a'] in now['pool']
        ranks.append(int(now['rank_all'][nxt['a']]))
    return {'batches_with_a_pool': len(pools), 'uncached_picks_served_mean': float(np.mean(served)),
            'trigger_in_pool': in_pool, 'triggers': len(pools) - 1,
            'trigger_rank_percentiles': dict(zip(['10', '50', '90'], np.percentile(ranks, [10, 50, 90]).tolist()))}


def row_product_ms(x, known):
    "Milliseconds per kernel row of the float64 products the batches compute, by batch size."
    u = np.asarray(x, np.float64)
    cols = u[known:]
    out = {}
    for b in (32, 64, 128, 256):
        a = u[:b].copy()
        out[str(b)] = min(timed(lambda: a @ cols.T)[1] for _ in range(3)) / b * 1e3
    colsT = np.ascontiguousarray(cols.T); a = u[:32].copy()
    out['32_transposed_copy'] = min(timed(lambda: a @ colsT)[1] for _ in range(3)) / 32 * 1e3
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n', type=int, default=20_000); p.add_argument('--d', type=int, default=2048)
    p.add_argument('--m', type=int, default=4000)
    p.add_argument('--batch', type=int, default=32); p.add_argument('--pool', type=int, default=4096)
    p.add_argument('--cache-mb', type=int, default=1024)
    p.add_argument('--out', default=None, help='default bench/results/greedy_lookahead_bB_pP.json')
    args = p.parse_args()
    from coincide import selection as S
    from coincide.transferability import unique_rows
    x = cluster(args.n, args.d)
    if len(unique_rows(x)[0]) != len(x): sys.exit('probe_lookahead: the cluster has equal rows; member and distinct positions would differ')
    spent, pools = collections.Counter(), []
    for owner, name, key in ((S, 'weighted_row_sums', 'row_sums'), (S._RowCache, 'fill', 'fill'), (S, 'gaussian_kernel', 'fill_kernel'),
                             (S, '_predicted_batch', 'lookahead'), (S._PoolKernel, 'row', 'lookahead_rows'), (S, 'greedy_distinct', 'greedy')):
        wrap(owner, name, key, spent)
    record_pools(S, pools)
    x32 = x.astype(np.float32)
    load0 = os.getloadavg()[0]
    _, t_floor = timed(lambda: x32 @ x32.T.copy())
    stats = {}
    picks, t_all = timed(S.greedy_mmd, x, args.m, cache_bytes=args.cache_mb << 20, batch=args.batch, pool=args.pool, stats=stats)
    phases = {k: spent[k] for k in ('row_sums', 'fill', 'fill_kernel', 'lookahead', 'lookahead_rows')}
    phases['steps'] = spent['greedy'] - spent['fill'] - spent['lookahead']
    phases['total'] = t_all
    turnover = [len(b['uncached'] - a['uncached']) for a, b in zip(pools[:-1], pools[1:])]
    visited = np.array([r for b in pools for r in b['visited']])
    res = {'command': ' '.join(['python', 'bench/probe_lookahead.py'] + sys.argv[1:]), 'n': args.n, 'd': args.d, 'm': args.m,
           'batch': args.batch, 'pool': args.pool, 'cache_mb': args.cache_mb, 'float32_gemm_s': t_floor,
           'phases_s': phases, 'phases_products': {k: v / t_floor for k, v in phases.items()},
           'picks_sha256': hashlib.sha256(picks.tobytes()).hexdigest(), 'kernel_rows_computed': stats['rows'], 'kernel_rows_known': stats['known'], 'batches': stats['batches'],
           'fills': fill_stats(picks, pools),
           'pool_turnover': {'uncached_pool_size_mean': float(np.mean([len(b['uncached']) for b in pools])),
                             'new_per_batch_mean': float(np.mean(turnover))},
           'visited_rank_percentiles': dict(zip(['25', '50', '75', '90'], np.percentile(visited, [25, 50, 75, 90]).tolist())),
           'row_product_ms': row_product_ms(x, stats['known']),
           'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', 'unset'), 'load_before': load0, 'load_after': os.getloadavg()[0]}
    out = Path(args.out or ROOT/'results'/f'greedy_lookahead_b{args.batch}_p{args.pool}.json')
    out.write_text(json.dumps(res, indent=1) + '\n')
    print(json.dumps(res, indent=1))


if __name__ == '__main__': main()
