"""k-means at the paper's scale (K = 10,000 on N = 665,000 at D = 2,048), and what training on a subsample costs in quality.

    python bench/bench_kmeans_scale.py paper   --json bench/results/kmeans.json   # per-iteration times, extrapolated
    python bench/bench_kmeans_scale.py quality --json bench/results/kmeans.json   # N=50,000, K=750: subsample vs full run

`paper` writes a planted run folder (`bench_selection.make_run`: N x D float16 on disk, Zipf-skewed planted clusters)
under --tmp, then, for faiss and the torch backend, times `coincide.clustering._train` with 1 and with 2 Lloyd
iterations on the same training sample of `--rows` rows drawn as faiss draws them: the difference is the cost of one
iteration on that many rows (start-up and initial centroids cancel out). One iteration is a (rows x D) by (D x K)
product plus the centroid update, so its cost grows linearly with the rows; it is extrapolated to the rows a run
trains on. `assign` is timed on one `--assign-rows` block of the memory map and extrapolated to N. A full 50-iteration
run is NOT run here (hours on 2 cores): every number for it is an extrapolation, and the JSON says so.

`quality` measures the documented faster path -- train on K x max_points_per_centroid sampled rows (faiss' own
subsampling, `--max-points-per-centroid` of `coincide cluster`), then assign every row -- against the full run (all
rows, since 256 K > N) on N=50,000, K=750, D=2,048: the agreement of assignments (`coincide.clustering.agreement`,
both directions averaged), the overlap of the COINCIDE selections (`coincide.selection.select_coincide`, 20 %), and
the same two numbers between two full runs that differ only in their seed, the noise floor any change is measured against.
"""
import argparse, json, os, sys, time
from pathlib import Path
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_selection import make_run                                  # the planted run folder of the selection bench


def load_avg() -> list: return [round(v, 2) for v in os.getloadavg()]


def run_folder(tmp:Path, n:int, d:int, k:int, zipf:float) -> Path:
    "The planted run folder for (n, d, k), generated once and reused."
    run = tmp/f'run-{n}x{d}-k{k}'
    if not (run/'layout.json').exists():
        t = time.perf_counter(); make_run(run, n, d, k, zipf)
        print(f"generated {run} ({n * d * 2 / 2**30:.2f} GiB float16) in {time.perf_counter() - t:.0f} s", flush=True)
    return run


def iteration_cost(x, k:int, rows:int, backend:str, seed:int=1234) -> dict:
    "Seconds of one Lloyd iteration on `rows` training rows (2 iterations minus 1), and of the initial set-up."
    import torch
    from coincide.clustering import _torch_sample, _train, faiss_sample, gather_rows
    p = max(rows // k, 1)
    idx = (faiss_sample if backend == 'faiss' else _torch_sample)(len(x), k, seed, p)
    xs = gather_rows(x, idx)                                                    # (k p, d) float32
    times = {}
    for niter in (1, 2):
        t = time.perf_counter(); _train(xs, k, niter, seed, backend, 'cpu', 65536); times[niter] = time.perf_counter() - t
    return {'rows': len(idx), 'one_iter_s': times[2] - times[1], 'setup_s': max(2 * times[1] - times[2], 0.0),
            'threads': torch.get_num_threads(), 'load_after': load_avg()}


def assign_cost(x, k:int, rows:int, backend:str) -> float:
    "Seconds to assign `rows` rows of the memory map to k unit centroids."
    from coincide.clustering import assign
    rng = np.random.default_rng(0)
    cent = rng.standard_normal((k, x.shape[1])).astype(np.float32); cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    t = time.perf_counter(); assign(x[:rows], cent, chunk=rows, backend=backend, device='cpu')
    return time.perf_counter() - t


def paper(a) -> dict:
    from coincide.core import load_npy
    run = run_folder(Path(a.tmp), a.n, a.d, a.k, a.zipf)
    x = load_npy(run/'embeddings.npy')
    out = {'N': a.n, 'D': a.d, 'K': a.k, 'niter': 50, 'measured_rows': a.rows, 'cpus': os.cpu_count(), 'load_before': load_avg(),
           'note': 'per-iteration times measured on the measured rows and extrapolated linearly in rows; no 50-iteration run at this '
                   'scale was run here. Full run = 50 iterations on all N rows (faiss trains on min(N, 256 K) rows) + one assignment of N.',
           'backends': {}}
    for backend in a.backends:
        it = iteration_cost(x, a.k, a.rows, backend)
        per_row_assign = assign_cost(x, a.k, a.assign_rows, backend) / a.assign_rows
        per_row_iter = it['one_iter_s'] / it['rows']
        est = lambda p: 50 * per_row_iter * min(a.n, a.k * p if p > 0 else a.n) + per_row_assign * a.n
        res = {**it, 'assign_rows': a.assign_rows, 'assign_s_per_1000_rows': per_row_assign * 1000,
               'extrapolated_full_run_h': est(256) / 3600,
               'extrapolated_subsample_h': {f'max_points_per_centroid={p} ({a.k * p:,} rows)': est(p) / 3600 for p in (64, 32, 16, 8)},
               'extrapolated_one_iteration_on_N_s': per_row_iter * a.n}
        out['backends'][backend] = res
        print(f"{backend}: one iteration on {it['rows']:,} rows {it['one_iter_s']:.1f} s (set-up {it['setup_s']:.1f} s); assign "
              f"{per_row_assign * 1000:.3f} s per 1,000 rows; extrapolated full run {res['extrapolated_full_run_h']:.2f} h; "
              f"subsample {({k: round(v, 2) for k, v in res['extrapolated_subsample_h'].items()})} h; load {load_avg()}", flush=True)
    return out


def overlap(a:np.ndarray, b:np.ndarray) -> float: return len(np.intersect1d(a, b)) / max(len(a), 1)


def quality(a) -> dict:
    from coincide.clustering import agreement, spherical_kmeans
    from coincide.core import load_npy
    from coincide.selection import select_coincide
    run = run_folder(Path(a.tmp), a.qn, a.d, a.qk, a.zipf)
    x = load_npy(run/'embeddings.npy')
    variants = {'full': dict(seed=1234, max_points_per_centroid=256), 'full, seed 1235': dict(seed=1235, max_points_per_centroid=256),
                **{f'subsample p={p}': dict(seed=1234, max_points_per_centroid=p) for p in a.ps}}
    res, labels, picks = {}, {}, {}
    for name, kw in variants.items():
        t = time.perf_counter(); stats = {}
        cent, lab = spherical_kmeans(x, a.qk, backend='faiss', stats=stats, **kw)
        t_cluster = time.perf_counter() - t
        folder = Path(a.tmp)/f'quality-{name.replace(" ", "_").replace(",", "")}'
        folder.mkdir(exist_ok=True)
        for f in ('embeddings.npy', 'layout.json'):
            if not (folder/f).exists(): os.symlink(run/f, folder/f)
        np.save(folder/'centroids.npy', cent); np.save(folder/'assignments.npy', lab)
        t = time.perf_counter(); idx, _ = select_coincide(folder, a.fraction); t_select = time.perf_counter() - t
        labels[name], picks[name] = lab, np.asarray(idx)
        res[name] = {'train_rows': stats.get('n_train'), 'cluster_s': round(t_cluster, 1), 'select_s': round(t_select, 1), 'load': load_avg()}
        print(f"{name}: trained on {stats.get('n_train'):,} rows, clustered in {t_cluster:.1f} s, selected {len(idx):,} in {t_select:.1f} s", flush=True)
    for name in variants:
        if name == 'full': continue
        ag = (agreement(labels['full'], labels[name]) + agreement(labels[name], labels['full'])) / 2
        res[name].update(assignment_agreement_with_full=round(ag, 4), selection_overlap_with_full=round(overlap(picks['full'], picks[name]), 4))
        print(f"{name}: agreement with the full run {ag:.4f}, selection overlap {res[name]['selection_overlap_with_full']:.4f}")
    return {'N': a.qn, 'D': a.d, 'K': a.qk, 'fraction': a.fraction, 'backend': 'faiss', 'niter': 50, 'data': f'bench_selection.make_run planted, Zipf {a.zipf}',
            'runs': res}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('part', choices=['paper', 'quality'])
    p.add_argument('--n', type=int, default=665_000); p.add_argument('--d', type=int, default=2048); p.add_argument('--k', type=int, default=10_000)
    p.add_argument('--rows', type=int, default=40_000, help='training rows the per-iteration time is measured on')
    p.add_argument('--assign-rows', type=int, default=16_384, help='rows of the memory map the assignment is timed on')
    p.add_argument('--backends', nargs='+', default=['faiss', 'torch'])
    p.add_argument('--qn', type=int, default=50_000); p.add_argument('--qk', type=int, default=750)
    p.add_argument('--ps', type=int, nargs='+', default=[32, 16, 8], help='max_points_per_centroid of the subsample runs')
    p.add_argument('--fraction', type=float, default=0.2); p.add_argument('--zipf', type=float, default=0.68)
    p.add_argument('--tmp', default='/tmp/coincide-bench-kmeans'); p.add_argument('--json', default=None)
    a = p.parse_args()
    Path(a.tmp).mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    res = {**(paper(a) if a.part == 'paper' else quality(a)), 'command': 'python ' + ' '.join(sys.argv), 'total_s': round(time.perf_counter() - t, 1),
           'measured': time.strftime('%Y-%m-%d %H:%M')}
    if a.json:
        out = Path(a.json); allres = json.loads(out.read_text()) if out.exists() else {}
        allres[a.part] = res; out.parent.mkdir(parents=True, exist_ok=True); out.write_text(json.dumps(allres, indent=1) + '\n')


if __name__ == '__main__': main()
