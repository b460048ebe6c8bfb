"""Greedy MMD on one large cluster against one float32 `x @ x.T.copy()` of it, measured in the same process.

`python bench/bench_greedy.py [--n 20000] [--d 2048] [--m 4000] [--reference] [--batch 32] [--pool 4096] [--profile] [--repeat R]` builds one cluster of `n` unit
vectors (float16, isotropic noise around a common direction, as in `bench_selection.py`), times one float32
product `x @ x.T.copy()` (the floor: one kernel's worth of dot products), then `greedy_mmd(x, m)` with the row
sums included (with `--device cuda` on the GPU), and with `--reference` the frozen float64 greedy
(tests/reference_greedy.py), checking that both make the same picks. Results go to bench/results/greedy.json,
with the kernel rows the greedy computed (`kernel_rows_computed`, and per pick), the rows it took from the
row-sum pass (`kernel_rows_known`), its BLAS batches, the float32 product timed again right after the greedy
(`float32_gemm_after_s`, and `ratio_to_mean_gemm` against the mean of both), the time of the row-sum pass alone
(`row_sums_s`, measured after; with BLAS on more than one thread also `row_sums_one_thread_s`, the same pass as one
loop on all BLAS threads), the BLAS threads and the load average before and after:
the machine may be shared, so only ratios measured in one process are meaningful. `--repeat R` times R greedy runs,
each between two float32 products, and writes each run's ratio to the mean of its two products (`rounds`) with their
mean, sd (ddof = 1), min and max (`ratio_to_mean_gemm_rounds`) and whether every run made the same picks. `--batch` and `--pool` set the
greedy's look-ahead (they change which kernel rows are computed, never a pick); `--profile` runs the greedy under
cProfile and stores the functions with the most own time (`profile`).
"""
import argparse, cProfile, json, os, pstats, sys, time
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def cluster(n, d, seed=0):
    "One cluster of `n` float16 unit vectors around a common direction."
    rng = np.random.default_rng(seed)
    x = 0.6 * rng.normal(size=d) / np.sqrt(d) + rng.standard_normal((n, d), dtype=np.float32) / np.float32(np.sqrt(d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def timed(f, *a, **kw):
    t = time.perf_counter(); out = f(*a, **kw); return out, time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n', type=int, default=20_000); p.add_argument('--d', type=int, default=2048)
    p.add_argument('--m', type=int, default=4000); p.add_argument('--reference', action='store_true')
    p.add_argument('--device', default=None, help='torch device for the kernels (cuda, cpu); default numpy')
    p.add_argument('--cache-mb', type=int, default=1024, help='memory for cached kernel rows (MiB)')
    p.add_argument('--batch', type=int, default=32, help='most kernel rows per BLAS product (greedy_mmd batch)')
    p.add_argument('--pool', type=int, default=4096, help='candidates the look-ahead follows (greedy_mmd pool)')
    p.add_argument('--profile', action='store_true', help='profile the greedy with cProfile')
    p.add_argument('--repeat', type=int, default=1, help='greedy runs, each between two float32 products')
    p.add_argument('--out', default=str(ROOT/'bench'/'results'/'greedy.json'))
    args = p.parse_args()
    from coincide.selection import greedy_mmd
    x = cluster(args.n, args.d)
    x32 = x.astype(np.float32)
    load0 = os.getloadavg()[0]
    _, t_floor = timed(lambda: x32 @ x32.T.copy())
    stats = {}
    run = lambda: greedy_mmd(x, args.m, stats=stats, device=args.device, cache_bytes=args.cache_mb << 20, batch=args.batch, pool=args.pool)
    profiler = cProfile.Profile() if args.profile else None
    if profiler: profiler.enable()
    picks, t_new = timed(run)
    if profiler: profiler.disable()
    _, t_after = timed(lambda: x32 @ x32.T.copy())                # the floor again, right after: it drifts on a shared machine
    rounds, same = [(t_floor, t_new, t_after)], True
    for _ in range(args.repeat - 1):
        again, t_run = timed(run)
        _, t_next = timed(lambda: x32 @ x32.T.copy())
        rounds.append((rounds[-1][2], t_run, t_next)); same &= bool(np.array_equal(again, picks))
    from threadpoolctl import threadpool_info
    res = {'command': ' '.join(['python', 'bench/bench_greedy.py'] + sys.argv[1:]), 'n': args.n, 'd': args.d, 'm': args.m,
           'device': args.device, 'cache_mb': args.cache_mb, 'batch': args.batch, 'pool': args.pool, 'float32_gemm_s': t_floor, 'greedy_s': t_new, 'ratio': t_new / t_floor,
           'float32_gemm_after_s': t_after, 'ratio_to_mean_gemm': t_new / ((t_floor + t_after) / 2),
           'kernel_rows_computed': stats.get('rows'), 'rows_per_pick': stats.get('rows', 0) / max(args.m, 1),
           'kernel_rows_known': stats.get('known'), 'batches': stats.get('batches'),
           'blas_threads': [i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'],
           'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', 'unset'), 'load_before': load0}
    from coincide.kernels import kernel_row_buffer, on_device, unique_rows, weighted_row_sums
    first, _, counts = unique_rows(x)
    rows, known = kernel_row_buffer(len(first), args.cache_mb << 20)
    u = on_device(x[first], args.device)                            # (q, d) float64 distinct rows
    _, res['row_sums_s'] = timed(weighted_row_sums, u, counts, rows=rows[:known])   # the row-sum pass alone
    if args.device is None and max(res['blas_threads'] or [1]) > 1:
        _, res['row_sums_one_thread_s'] = timed(weighted_row_sums, u, counts, rows=rows[:known], threads=1)
    del rows, u
    if args.repeat > 1:
        r = np.array([g / ((a + b) / 2) for a, g, b in rounds])
        res['rounds'] = [{'float32_gemm_before_s': a, 'greedy_s': g, 'float32_gemm_after_s': b, 'ratio_to_mean_gemm': g / ((a + b) / 2)} for a, g, b in rounds]
        res['ratio_to_mean_gemm_rounds'] = {'n': len(r), 'mean': r.mean(), 'sd': r.std(ddof=1), 'min': r.min(), 'max': r.max()}
        res['same_picks_every_round'] = same
    if args.reference:
        sys.path.insert(0, str(ROOT/'tests'))
        import reference_greedy
        want, t_ref = timed(reference_greedy.greedy_mmd, x, args.m)
        res.update(reference_s=t_ref, reference_ratio=t_ref / t_floor, same_picks=bool(np.array_equal(picks, want)))
    if profiler:
        stats_ = pstats.Stats(profiler).stats                     # (file, line, name) -> (calls, ncalls, own s, cumulative s, callers)
        top = sorted(stats_.items(), key=lambda kv: -kv[1][2])[:12]
        res['profile'] = [{'function': f'{Path(f).name}:{line}({name})', 'calls': v[1], 'own_s': round(v[2], 3), 'cumulative_s': round(v[3], 3)}
                          for (f, line, name), v in top]
    res['load_after'] = os.getloadavg()[0]
    print(json.dumps(res, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + '\n')


if __name__ == '__main__': main()
