"""How long `coincide.testbed.benchmark.make` takes, and how much memory, at a few sizes (run by hand).

    python bench/bench_benchmark.py [--sizes 1000 10000] [--keep DIR] [--out bench/results/benchmark_generation.json]

Prints, per size: seconds to generate, records per second, seconds per 1,000 training records
relative to the smallest size (1.0 = linear scaling), seconds for a cached call, seconds to
load, the peak resident memory of the process, and the PNGs written (text-only records have none);
`--out` also writes them as JSON with the command and the load average. The machine is shared: run it when idle.
"""
import argparse, json, os, resource, shutil, sys, tempfile, time
from pathlib import Path

os.environ.setdefault('TQDM_DISABLE', '1')
from coincide.testbed.benchmark import SUITES, make, load_benchmark


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(n_train:int, root:Path) -> dict:
    n_eval, n_captions = 200, max(n_train * 2 // 5, 10)  # the default make(): 4,000 captions for 10,000 records
    out = root/f'b{n_train}'
    t0 = time.perf_counter(); make(out, n_train=n_train, n_eval=n_eval, n_captions=n_captions); gen = time.perf_counter() - t0
    t0 = time.perf_counter(); make(out, n_train=n_train, n_eval=n_eval, n_captions=n_captions); cached = time.perf_counter() - t0
    t0 = time.perf_counter(); load_benchmark(out); load = time.perf_counter() - t0
    n_records = 2 * n_train + n_captions + n_eval * len(SUITES)   # training, as many pretraining records (the default), captions, evaluation
    return dict(n_train=n_train, records=n_records, pngs=sum(1 for _ in out.rglob('*.png')), gen_s=gen, rec_per_s=n_records / gen, cached_s=cached, load_s=load,
                peak_mb=peak_rss_mb(), disk_mb=sum(p.stat().st_size for p in out.rglob('*') if p.is_file()) / 2**20)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--sizes', type=int, nargs='+', default=[1000, 10000])
    p.add_argument('--keep', default=None, help='write the benchmarks here instead of a temporary folder')
    p.add_argument('--out', default=None, help='also write the rows as JSON here')
    args = p.parse_args()
    load0 = os.getloadavg()[0]
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix='bench_benchmark_'))
    try:
        rows = [run(n, root) for n in args.sizes]
    finally:
        if not args.keep: shutil.rmtree(root, ignore_errors=True)
    base = rows[0]['gen_s'] / rows[0]['records']
    if args.out:
        Path(args.out).write_text(json.dumps({'command': ' '.join(['python', 'bench/bench_benchmark.py'] + sys.argv[1:]), 'cpu_count': os.cpu_count(),
                                              'load_before': load0, 'load_after': os.getloadavg()[0], 'rows': rows}, indent=1) + '\n')
    print(f"{'n_train':>8} {'records':>8} {'pngs':>6} {'gen s':>7} {'rec/s':>7} {'ratio':>6} {'cached s':>9} {'load s':>7} {'peak MB':>8} {'disk MB':>8}")
    for r in rows:
        print(f"{r['n_train']:>8} {r['records']:>8} {r['pngs']:>6} {r['gen_s']:>7.2f} {r['rec_per_s']:>7.0f} {r['gen_s'] / r['records'] / base:>6.2f} "
              f"{r['cached_s']:>9.3f} {r['load_s']:>7.3f} {r['peak_mb']:>8.0f} {r['disk_mb']:>8.1f}")
    print(f'cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} (other work on the machine slows these numbers)')


if __name__ == '__main__':
    main()
