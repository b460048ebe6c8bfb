"""Greedy MMD A/B in one process: the greedy before this version (tests/reference_greedy.py) against the current one.

`python bench/bench_greedy_ab.py [--n 20000] [--d 2048] [--m 4000]`: one cluster as in `bench_greedy.py`, one float32
`x @ x.T.copy()` (the floor), the kernel row sums once (shared by both), then each greedy given those sums, with the
number of kernel rows the current one computed and whether the picks agree. Writes bench/results/greedy_ab.json.
"""
import argparse, json, os, sys, time
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT/'tests'), str(ROOT/'bench')]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n', type=int, default=20_000); p.add_argument('--d', type=int, default=2048); p.add_argument('--m', type=int, default=4000)
    p.add_argument('--out', default=str(ROOT/'bench'/'results'/'greedy_ab.json'))
    args = p.parse_args()
    import reference_greedy
    from bench_greedy import cluster
    from coincide.selection import greedy_mmd
    from coincide.transferability import density_sums
    x = cluster(args.n, args.d)
    x32 = x.astype(np.float32)
    out = {'command': ' '.join(['python', 'bench/bench_greedy_ab.py'] + sys.argv[1:]), 'n': args.n, 'd': args.d, 'm': args.m}
    t = time.perf_counter(); x32 @ x32.T.copy(); out['float32_gemm_s'] = time.perf_counter() - t
    t = time.perf_counter(); _, r = density_sums(x); out['row_sums_s'] = time.perf_counter() - t
    picks = []
    for name, f in [('reference (256 MiB cache)', lambda s: reference_greedy.greedy_mmd(x, args.m, r=r)),
                    ('current (1 GiB cache)', lambda s: greedy_mmd(x, args.m, r=r, stats=s))]:
        s, l0 = {}, os.getloadavg()[0]
        t = time.perf_counter(); picks.append(f(s)); el = time.perf_counter() - t
        out[name] = {'greedy_s_given_r': el, 'rows': s.get('rows'), 'load': [l0, os.getloadavg()[0]]}
    out['same_picks'] = bool(np.array_equal(*picks))
    print(json.dumps(out, indent=1))
    Path(args.out).write_text(json.dumps(out, indent=1) + '\n')


if __name__ == '__main__': main()
