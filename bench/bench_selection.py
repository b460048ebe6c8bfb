"""Benchmark of COINCIDE's selection stage (run by hand: `python bench/bench_selection.py`).

Part 1 - greedy MMD on one 2,000-member cluster picking 400 (D=2048 float16), running sums
(`coincide.selection.greedy_mmd`) against the from-scratch algorithm of the reference code (every
candidate's MMD^2 recomputed from a materialised kernel at every step). The from-scratch version is
too slow to run for all 400 steps, so it is timed on sampled steps, each started from the fast
version's prefix (it must pick the same member there), and the total is extrapolated by a quadratic
fit in the step number; its first `--check-steps` steps are also run in full and compared pick by pick.

Part 2 - the selection stage (everything after k-means: transferability, density, allocation,
greedy MMD, writing indices, table and manifest with input hashes) on N=665,000 x D=2,048 float16
embeddings read from a memory-mapped file, K=10,000 clusters with Zipf-skewed sizes. The run folder
is written by `coincide.testbed.synthetic.synthetic_run` (streaming) in a temporary folder on disk and
deleted afterwards (or `--run DIR` reuses one). The stage runs in a subprocess, once per `--workers`
count; its wall and CPU time, peak resident memory (getrusage ru_maxrss, and the anonymous and
file-page parts sampled from /proc), a breakdown of the time and the hashes of its outputs are
printed, and with `--results FILE` written as JSON.
"""
import argparse, json, os, resource, shutil, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np


def unit(x): return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ---------------------------------------------------------------- part 1: greedy vs from scratch
def scratch_step(K, sel, n):
    "One step of the reference greedy: every candidate's MMD^2 from scratch; the argmin (first on ties)."
    Kxx = K.mean()
    cands = np.setdiff1d(np.arange(n), sel)
    vals = np.empty(len(cands))
    for i, c in enumerate(cands):
        idx = np.append(sel, c)
        vals[i] = Kxx + K[np.ix_(idx, idx)].mean() - 2 * K[:, idx].mean()
    return int(cands[np.argmin(vals)])


def scratch_step_vectorized(K, sel, n, chunk=32):
    "The same step written like the reference code: every candidate's enlarged set at once (in chunks of candidates)."
    Kxx = K.mean()
    cands = np.setdiff1d(np.arange(n), sel)
    vals = np.empty(len(cands))
    for i0 in range(0, len(cands), chunk):
        cs = cands[i0:i0 + chunk]
        T = np.concatenate([np.tile(sel, (len(cs), 1)), cs[:, None]], axis=1)       # (c, t+1) each candidate's enlarged set
        kxy = K[:, T].mean(axis=(0, 2))                                              # (c,)
        kyy = K[T[:, :, None], T[:, None, :]].mean(axis=(1, 2))                      # (c,)
        vals[i0:i0 + chunk] = Kxx + kyy - 2 * kxy
    return int(cands[np.argmin(vals)])


def bench_greedy(n=2000, m=400, d=2048, seed=0, check_steps=40, sample=(0, 100, 200, 300, 399)):
    from coincide.selection import greedy_mmd
    rng = np.random.default_rng(seed)
    x = unit(rng.normal(size=d) / np.sqrt(d) + rng.normal(size=(n, d)) / np.sqrt(d)).astype(np.float16)
    t = time.perf_counter(); fast = greedy_mmd(x, m); t_fast = time.perf_counter() - t
    xf = x.astype(np.float64)
    t = time.perf_counter()
    K = np.exp(-((xf ** 2).sum(1)[:, None] + (xf ** 2).sum(1)[None] - 2 * xf @ xf.T) / 2)   # the reference's kernel
    t_kernel = time.perf_counter() - t
    sel = np.zeros(0, np.int64)
    for s in range(check_steps):                              # the first steps in full
        c = scratch_step(K, sel, n); sel = np.append(sel, c)
    same_prefix = bool((sel == fast[:check_steps]).all())
    times, same_sampled = [], True
    for s in sample:                                          # sampled late steps, from the fast prefix
        t = time.perf_counter(); c = scratch_step(K, fast[:s], n); times.append(time.perf_counter() - t)
        same_sampled &= c == fast[s]
    vtimes = []
    for s in sample:                                          # the reference's vectorised form, same steps
        t = time.perf_counter(); c = scratch_step_vectorized(K, fast[:s], n); vtimes.append(time.perf_counter() - t)
        same_sampled &= c == fast[s]
    coef = np.polyfit(np.array(sample, float), np.array(times), 2)
    t_scratch = t_kernel + float(np.polyval(coef, np.arange(m)).sum())
    vcoef = np.polyfit(np.array(sample, float), np.array(vtimes), 2)
    t_vscratch = t_kernel + float(np.polyval(vcoef, np.arange(m)).sum())
    print(f"[greedy] cluster n={n}, picks m={m}, D={d} float16")
    print(f"[greedy] running sums (coincide.selection.greedy_mmd, incl. kernel row sums): {t_fast:.2f} s")
    print(f"[greedy] from scratch: kernel {t_kernel:.2f} s + steps timed at t={list(sample)}: "
          + ', '.join(f'{v:.2f}' for v in times) + f" s -> extrapolated total {t_scratch:.0f} s (quadratic fit, sum over {m} steps)")
    print(f"[greedy] from scratch, vectorised over candidates like the reference code: steps at t={list(sample)}: "
          + ', '.join(f'{v:.2f}' for v in vtimes) + f" s -> extrapolated total {t_vscratch:.0f} s")
    best = min(t_scratch, t_vscratch)
    print(f"[greedy] speed-up {best / t_fast:.0f}x against the faster from-scratch version (target >= 500x); same picks: "
          f"first {check_steps} steps in full {same_prefix}, sampled steps (both versions) {bool(same_sampled)}")
    return best / t_fast, same_prefix and bool(same_sampled)


# ---------------------------------------------------------------- part 2: the selection stage at LLaVA-665K scale
def make_run(run, N=665_000, D=2048, K=10_000, a=0.68, seed=0):
    "Write a run folder with planted clusters (the planted labels and centres are the clustering), streaming the embeddings."
    from coincide.testbed.synthetic import synthetic_run
    synthetic_run(run, n=N, k=K, d=D, seed=seed, zipf=a, lloyd=None, common=0.6, spread=(0.6, 1.6))
    return np.sort(np.bincount(np.load(run/'assignments.npy'), minlength=K))[::-1]


class MemorySampler:
    "Peak RssAnon and RssFile of this process and its children, sampled every `every` seconds in a thread."
    def __init__(self, every=0.2):
        import threading, psutil
        self.psutil, self.every, self.peak = psutil, every, {'anon_gb': 0.0, 'file_gb': 0.0, 'total_gb': 0.0}
        self.stop = threading.Event(); self.thread = threading.Thread(target=self.run, daemon=True); self.thread.start()

    def sample(self):
        me = self.psutil.Process()
        anon = file = 0
        for p in [me] + me.children(recursive=True):
            try:
                for line in open(f'/proc/{p.pid}/status'):
                    if line.startswith('RssAnon:'): anon += int(line.split()[1])
                    if line.startswith('RssFile:'): file += int(line.split()[1])
            except OSError: pass
        for k, v in (('anon_gb', anon), ('file_gb', file), ('total_gb', anon + file)): self.peak[k] = max(self.peak[k], v / 2**20)

    def run(self):
        while not self.stop.wait(self.every): self.sample()

    def done(self):
        self.stop.set(); self.thread.join(); return self.peak


def vm_hwm_gb():
    "Peak resident memory of this process image (VmHWM), in GiB."
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'): return int(line.split()[1]) / 2**20
    return float('nan')


def child(run, out, fraction, workers=1, device=None):
    "The selection stage as `coincide select` runs it, with a breakdown of times and peak memory (anonymous / file pages)."
    t0 = time.perf_counter()
    mem = MemorySampler()
    from coincide.core import now_iso
    from coincide.selection import select_coincide, save_selection, RUN_FILES
    started, timings = now_iso(), {}
    idx, table = select_coincide(run, fraction, progress=False, timings=timings, workers=workers, device=device)
    t = time.perf_counter()
    save_selection(out, idx, 'select', {'fraction': fraction, 'n_records': len(np.load(Path(run)/'assignments.npy', mmap_mode='r'))},
                   {n.split('.')[0]: Path(run)/n for n in RUN_FILES}, table=table, started=started)
    timings['write (incl. sha256 of inputs)'] = time.perf_counter() - t
    a = table.attrs
    big = table.sort_values('size').iloc[-1]
    print(json.dumps({'timings': timings, 'total_s': time.perf_counter() - t0, 'budget': a['budget'], 'selected': a['selected'],
                      'paper_selected': a['paper_selected'], 'largest_cluster': int(big['size']), 'largest_cluster_taken': int(big['taken']),
                      'max_taken': int(table['taken'].max()), 'greedy_clusters': int(((table['taken'] > 0) & (table['taken'] < table['size'])).sum()),
                      'vm_hwm_gb': vm_hwm_gb(), 'peak_rss_sampled': mem.done()}))


def spawn(args):
    "Run a command; return (returncode, stdout, stderr, rusage of that one process)."
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, out, err, ru


def run_stage(run, out, fraction, workers, device):
    "The stage in a fresh process: its wall time, CPU time (with its children), peak RSS and breakdown."
    load = os.getloadavg()[0]
    t = time.perf_counter()
    rc, so, err, ru = spawn([sys.executable, __file__, '--child', str(run), str(out), str(fraction), str(workers), str(device)])
    wall = time.perf_counter() - t
    if rc: print(so, err); raise SystemExit(1)
    info = json.loads(so.strip().splitlines()[-1])
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    info.update(wall_s=wall, cpu_s=ru.ru_utime + ru.ru_stime, maxrss_gb=ru.ru_maxrss / 2**20, workers=workers, device=device,
                load_before=load, load_after=os.getloadavg()[0], openblas_threads=os.environ.get('OPENBLAS_NUM_THREADS', 'default'),
                indices_sha256=__import__('hashlib').sha256((Path(out)/'indices.npy').read_bytes()).hexdigest(),
                clusters_sha256=__import__('hashlib').sha256((Path(out)/'clusters.csv').read_bytes()).hexdigest())
    print(f"[stage] workers {workers}, device {device}: wall {wall:.1f} s (in-process {info['total_s']:.1f} s), CPU {info['cpu_s']:.1f} s, "
          f"load {load:.1f} -> {info['load_after']:.1f}; peak RSS {info['maxrss_gb']:.2f} GiB (sampled: anonymous "
          f"{info['peak_rss_sampled']['anon_gb']:.2f} GiB, file pages {info['peak_rss_sampled']['file_gb']:.2f} GiB)")
    print('[stage] breakdown: ' + ', '.join(f'{k} {v:.1f} s' for k, v in info['timings'].items()))
    return info


def bench_stage(N, D, K, a, fraction, tmp, workers_list, device, run=None, results=None):
    tmpdir = Path(tempfile.mkdtemp(dir=tmp, prefix='bench-select-'))
    try:
        if run is None:
            t = time.perf_counter()
            # generated in its own process, so that this (small) process's memory is not inherited by the measured one
            rc, out, err, _ = spawn([sys.executable, __file__, '--generate', str(tmpdir/'run'), str(N), str(D), str(K), str(a)])
            if rc: print(out, err); raise SystemExit(1)
            sizes = json.loads(out.strip().splitlines()[-1])
            print(f"[stage] generated N={N} x D={D} float16 ({N * D * 2 / 2**30:.2f} GiB), K={K}, Zipf a={a}: "
                  f"largest clusters {sizes[:3]}, smallest {sizes[-1]}, in {time.perf_counter() - t:.0f} s")
            run = tmpdir/'run'
        infos = [run_stage(run, tmpdir/f'out-{w}', fraction, w, device) for w in workers_list]
        same = len({(i['indices_sha256'], i['clusters_sha256']) for i in infos}) == 1
        print(f"[stage] outputs byte-identical across workers {workers_list}: {same}")
        if results:
            res = {'command': ' '.join(['python', 'bench/bench_selection.py'] + sys.argv[1:]), 'n': N, 'd': D, 'k': K, 'zipf': a,
                   'fraction': fraction, 'runs': infos, 'byte_identical_across_workers': same, 'cpus': os.cpu_count()}
            Path(results).parent.mkdir(parents=True, exist_ok=True); Path(results).write_text(json.dumps(res, indent=1) + '\n')
        return infos
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


if __name__ == '__main__':
    if len(sys.argv) > 1 and sys.argv[1] == '--generate':
        sizes = make_run(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]))
        print(json.dumps(sizes.tolist())); raise SystemExit(0)
    if len(sys.argv) > 1 and sys.argv[1] == '--child':
        child(sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]) if len(sys.argv) > 5 else 1,
              None if len(sys.argv) <= 6 or sys.argv[6] == 'None' else sys.argv[6]); raise SystemExit(0)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n', type=int, default=665_000); p.add_argument('--d', type=int, default=2048)
    p.add_argument('--k', type=int, default=10_000); p.add_argument('--zipf', type=float, default=0.68)
    p.add_argument('--fraction', type=float, default=0.2); p.add_argument('--tmp', default=None, help='folder for the temporary run')
    p.add_argument('--run', default=None, help='an existing run folder to use instead of generating one')
    p.add_argument('--workers', type=int, nargs='+', default=[1], help='run the stage once per worker count and compare the outputs')
    p.add_argument('--device', default=None, help='torch device for the kernels (default: numpy)')
    p.add_argument('--results', default=None, help='write the stage results as JSON here (e.g. bench/results/selection_stage.json)')
    p.add_argument('--skip-greedy', action='store_true'); p.add_argument('--skip-stage', action='store_true')
    args = p.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    if not args.skip_greedy: bench_greedy()
    if not args.skip_stage: bench_stage(args.n, args.d, args.k, args.zipf, args.fraction, args.tmp, args.workers, args.device,
                                        args.run, args.results)
