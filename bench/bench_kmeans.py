"""Time spherical k-means: faiss vs torch, and faiss with its bundled OpenBLAS' default kernel vs a forced one.

    python bench/bench_kmeans.py                      # N=100,000, D=256, K=1,000, 50 iterations (minutes on 2 cores)
    python bench/bench_kmeans.py --niter 10           # fewer iterations; also prints the 50-iteration extrapolation
    python bench/bench_kmeans.py --n 20000 --k 200    # a quick look

Each configuration runs in its own subprocess (so that OPENBLAS_CORETYPE, read when OpenBLAS loads, takes effect
and peak memory is per run) on the same synthetic data (`planted_clusters`, seed 0): training on the faiss
subsample (all N rows here, since 256 K > N), then assigning all N rows. The OpenBLAS variable is set only here,
in the benchmark's subprocesses, never in the library, the tests or CI. Prints one line per run and the ratios.

Measured on the 2-core AMD EPYC (Zen 3) development machine, shared with other jobs, so take the ratios more
seriously than the seconds (see bench/results/clustering_speed.md for the numbers and the command that produced them).
"""
import argparse, json, os, resource, subprocess, sys, time

CONFIGS = {  # name -> (backend, extra environment)
    'faiss': ('faiss', {}),
    'faiss+Haswell': ('faiss', {'OPENBLAS_CORETYPE': 'Haswell'}),
    'torch': ('torch', {}),
}


def blas_kernels() -> dict:
    "The architecture each loaded OpenBLAS reports (threadpoolctl), e.g. {'libopenblas': 'Zen'}."
    try: from threadpoolctl import threadpool_info
    except ImportError: return {}
    return {i['prefix']: i.get('architecture') for i in threadpool_info() if i.get('internal_api') == 'openblas'}


def worker(backend:str, n:int, d:int, k:int, niter:int, seed:int) -> dict:
    "Time training and assignment for one backend in this process; return the timings as a dict."
    import numpy as np, torch
    if backend == 'faiss': import faiss
    from coincide.clustering import faiss_sample, gather_rows, _train, assign
    from coincide.testbed.synthetic import planted_clusters
    x, _ = planted_clusters(n, d, k, spread=1.0, seed=0)                        # (n, d) float32
    idx = faiss_sample(n, k, seed)
    xs = gather_rows(x, idx)                                                     # (m, d)
    t0 = time.perf_counter(); cent, _ = _train(xs, k, niter, seed, backend, 'cpu', 65536)
    t1 = time.perf_counter(); lab = assign(x, cent, backend=backend, device='cpu')
    t2 = time.perf_counter()
    return {'backend': backend, 'train_s': t1 - t0, 'assign_s': t2 - t1, 'per_iter_s': (t1 - t0) / niter, 'n_train': len(idx),
            'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'blas': blas_kernels(),
            'threads': {'torch': torch.get_num_threads(), **({'faiss_omp': faiss.omp_get_max_threads()} if backend == 'faiss' else {})},
            'sizes_max': int(np.bincount(lab, minlength=k).max())}


def run_config(name:str, args) -> dict:
    "Run one configuration in a subprocess and return its timings."
    backend, env = CONFIGS[name]
    cmd = [sys.executable, __file__, '--worker', backend, '--n', str(args.n), '--d', str(args.d), '--k', str(args.k),
           '--niter', str(args.niter), '--seed', str(args.seed)]
    env = {**{k: v for k, v in os.environ.items() if k != 'OPENBLAS_CORETYPE'}, **env}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n', type=int, default=100_000); p.add_argument('--d', type=int, default=256)
    p.add_argument('--k', type=int, default=1000); p.add_argument('--niter', type=int, default=50)
    p.add_argument('--seed', type=int, default=1234); p.add_argument('--repeats', type=int, default=1)
    p.add_argument('--configs', nargs='+', default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.d, args.k, args.niter, args.seed))); return
    print(f'spherical k-means: N={args.n:,} D={args.d} K={args.k:,} niter={args.niter}, {os.cpu_count()} CPUs, '
          f'best of {args.repeats}')
    res = {}
    for r in range(args.repeats):
        for name in args.configs:
            t = run_config(name, args)
            if name not in res or t['train_s'] < res[name]['train_s']: res[name] = t
    for name, t in res.items():
        extra = f", extrapolated to 50 iterations: {t['per_iter_s'] * 50:.1f} s" if args.niter != 50 else ''
        print(f"{name:>14}: train {t['train_s']:7.2f} s ({t['per_iter_s']:.3f} s/iter{extra}), assign {t['assign_s']:6.2f} s, "
              f"peak RSS {t['peak_rss_mb']:.0f} MB, OpenBLAS kernels {t['blas']}, threads {t['threads']}")
    ratio = lambda a, b, key: res[a][key] / res[b][key]
    if {'faiss', 'torch'} <= res.keys():
        print(f"torch / faiss: train {ratio('torch', 'faiss', 'train_s'):.2f}x, assign {ratio('torch', 'faiss', 'assign_s'):.2f}x the time")
    if {'faiss', 'faiss+Haswell'} <= res.keys():
        print(f"faiss default kernel / OPENBLAS_CORETYPE=Haswell: train {ratio('faiss', 'faiss+Haswell', 'train_s'):.2f}x, "
              f"assign {ratio('faiss', 'faiss+Haswell', 'assign_s'):.2f}x the time")


if __name__ == '__main__': main()
