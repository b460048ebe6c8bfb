"""How fast faiss' own OpenBLAS runs k-means here with the kernels it picks, and with each kernel family forced (run by hand).

faiss-cpu bundles an OpenBLAS of its own (0.3.15 in faiss-cpu 1.15.1), which picks its kernels from the CPU model; on a
CPU newer than it knows it falls back to an old generic family (`Prescott`) while numpy's newer OpenBLAS picks the right
one. This times, each in a fresh process with one thread, on the same unit-norm float32 data: a flat inner-product search
of every row against K centroids (the product at the heart of a Lloyd iteration) and a spherical `faiss.Kmeans` of a few
iterations, with OpenBLAS' own choice and with `OPENBLAS_CORETYPE` set to each family the CPU can run. Results go to
bench/results/faiss_blas.json with the kernel threadpoolctl reports for each run.

    python bench/bench_faiss_blas.py [--n 20000] [--d 2048] [--k 2000] [--niter 3]

`OPENBLAS_CORETYPE` is set only in this script's subprocesses, never in the library, the tests or CI.
"""
import argparse, json, os, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(n:int, # rows
            d:int, # columns
            k:int, # centroids
            niter:int, # k-means iterations
           ) -> dict: # seconds and the kernel faiss' OpenBLAS reports
    "Time one flat search and one short k-means in this process."
    import numpy as np, faiss
    from coincide.clustering import faiss_blas_kernel
    faiss.omp_set_num_threads(1)
    x = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)                          # (n, d) unit rows
    index = faiss.IndexFlatIP(d); index.add(x[:k])
    t = time.perf_counter(); index.search(x, 1); search = time.perf_counter() - t
    km = faiss.Kmeans(d, k, niter=niter, seed=1234, spherical=True, max_points_per_centroid=n // k + 1)
    t = time.perf_counter(); km.train(x); kmeans = time.perf_counter() - t
    return {'faiss_openblas_kernel': faiss_blas_kernel(), 'search_s': search, 'search_gflops': 2 * n * k * d / search / 1e9, 'kmeans_s': kmeans}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n', type=int, default=20_000); p.add_argument('--d', type=int, default=2048)
    p.add_argument('--k', type=int, default=2000); p.add_argument('--niter', type=int, default=3)
    p.add_argument('--out', default=str(ROOT/'bench'/'results'/'faiss_blas.json'))
    p.add_argument('--measure', action='store_true', help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args.n, args.d, args.k, args.niter))); return
    import torch
    capability = torch.backends.cpu.get_cpu_capability()                  # 'AVX512', 'AVX2' or 'DEFAULT'
    coretypes = [None] + (['Haswell'] if capability in ('AVX2', 'AVX512') else []) + (['SkylakeX'] if capability == 'AVX512' else [])
    rows = []
    for ct in coretypes:
        env = {k: v for k, v in os.environ.items() if k != 'OPENBLAS_CORETYPE'} | ({'OPENBLAS_CORETYPE': ct} if ct else {})
        cmd = [sys.executable, __file__, '--measure', '--n', str(args.n), '--d', str(args.d), '--k', str(args.k), '--niter', str(args.niter)]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode: sys.exit(f"OPENBLAS_CORETYPE={ct}: failed\n{res.stderr}")
        rows.append({'OPENBLAS_CORETYPE': ct, **json.loads(res.stdout.strip().splitlines()[-1])})
        r = rows[-1]
        print(f"OPENBLAS_CORETYPE={ct or '(unset)':<9} kernel {r['faiss_openblas_kernel']:<9} search {r['search_s']:6.2f} s "
              f"({r['search_gflops']:5.1f} GFLOPS)  k-means {args.niter} iterations {r['kmeans_s']:6.2f} s", flush=True)
    import faiss
    report = {'command': ' '.join(['python', 'bench/bench_faiss_blas.py'] + sys.argv[1:]), 'n': args.n, 'd': args.d, 'k': args.k,
              'niter': args.niter, 'threads': 1, 'faiss': faiss.__version__, 'torch_cpu_capability': capability,
              'cpu': next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), None),
              'load_after': os.getloadavg()[0], 'runs': rows}
    Path(args.out).write_text(json.dumps(report, indent=1) + '\n')


if __name__ == '__main__':
    main()
