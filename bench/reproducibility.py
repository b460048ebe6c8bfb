"""Which outputs of the demo's selection chain stay byte-identical when the CPU's floating-point kernels differ (run by hand).

Two machines "of the same kind" can still run different kernels: torch's ATen, oneDNN, MKL, numpy's own SIMD loops, the
OpenBLAS bundled with numpy and faiss, and faiss' own SIMD code each pick AVX-512 or AVX2 code from the CPU model. This
probe emulates a second machine on one: it runs the demo's selection chain (benchmark, reference model, extraction,
k-means, COINCIDE's selection, a Random draw)

- `native`: with this machine's own kernels, from an empty cache;
- `native-again`: the same, from another empty cache (same machine, same kernels: the chain's determinism);
- `avx2`: with AVX2 kernels forced in every library above (`AVX2_KERNELS`), from an empty cache;
- `avx2-from-reference`, `avx2-from-extract`, `avx2-from-cluster`: with AVX2 kernels, on a cache seeded with copies of
  `native`'s stages up to the named one, so that each later stage runs alone on identical inputs: where a difference starts.

Every run is a fresh process with one torch thread (the demo's `DEMO_THREADS`) and records the kernels each library
reports. For each stage it records the sha256 of its output and, against `native`, whether the bytes match and how they
compare (weights and embeddings: the largest absolute difference and how many entries differ; k-means: the adjusted Rand
index of the assignments, 1 for the same partition, whether they are identical and how far the centroids are; selections: the share of indices in common), and the source shares of
COINCIDE's subset.

    python bench/reproducibility.py [--quick] [--out bench/results/reproducibility.json]

The forced-AVX2 runs stand in for another machine's kernels; they are not that machine (its library versions, thread
count and CPU model can differ too). On a CPU without AVX-512 the `avx2` runs use the machine's own kernels and the probe
shows only determinism.
"""
import argparse, hashlib, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
AVX2_KERNELS = {'ATEN_CPU_CAPABILITY': 'avx2', 'ONEDNN_MAX_CPU_ISA': 'AVX2', 'MKL_ENABLE_INSTRUCTIONS': 'AVX2',
                'NPY_DISABLE_CPU_FEATURES': 'X86_V4 AVX512_ICL AVX512_SPR', 'OPENBLAS_CORETYPE': 'Haswell',
                'FAISS_SIMD_LEVEL': 'AVX2'} # environment variables that make each library run its AVX2 code
STAGES = ('benchmark', 'reference', 'extract', 'cluster', 'select-coincide')
RUNS = {'native': (False, None), 'native-again': (False, None), 'avx2': (True, None), # name -> (AVX2 kernels, native stages copied up to)
        'avx2-from-reference': (True, 'reference'), 'avx2-from-extract': (True, 'extract'), 'avx2-from-cluster': (True, 'cluster')}


def sha256(paths:list, # files, hashed in this order
          ) -> str:
    "One sha256 over the bytes of `paths`, in order."
    h = hashlib.sha256()
    for p in paths: h.update(Path(p).read_bytes())
    return h.hexdigest()


def stage_files(cache:Path, # a demo cache
                keys:dict, # stage name -> its folder in `cache`
               ) -> dict: # stage name -> the files that stage produced, in a fixed order
    "The outputs of each stage of the chain."
    folder = {s: cache/keys[s] for s in STAGES}
    bench = folder['benchmark']
    records = [bench/f for f in ('train.json', 'pretrain.json', 'captions.json', 'truth.json')] + sorted((bench/'eval').glob('*.json'))
    return {'benchmark': records + sorted((bench/'images').rglob('*.png')),
            'reference': sorted((folder['reference']/'model').glob('*.safetensors')),
            'extract': [folder['extract']/'embeddings.npy'],
            'cluster': [folder['cluster']/'assignments.npy', folder['cluster']/'centroids.npy'],
            'select-coincide': [folder['select-coincide']/'indices.npy']}


def kernels() -> dict:
    "The code path each library reports in this process."
    import torch, faiss
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    from threadpoolctl import threadpool_info
    return {'torch': torch.backends.cpu.get_cpu_capability(), 'torch_threads': torch.get_num_threads(),
            'numpy_simd': [f for f in __cpu_dispatch__ if __cpu_features__.get(f)],   # the dispatch targets numpy may use, as numpy.show_runtime lists them
            'openblas': sorted({i.get('architecture') for i in threadpool_info() if i['internal_api'] == 'openblas'}),
            'faiss': faiss.SIMDConfig.get_level_name()}


def chain(cache:Path, # a demo cache; finished stages in it are reused
          quick:bool, # the demo's --quick sizes
         ) -> dict: # stage keys, hashes, kernels, COINCIDE's source shares
    "Run the demo's selection chain in this process."
    import torch
    from coincide.testbed.demo import QUICK, DemoConfig, Demo, DEMO_THREADS, benchmark_stage, reference_stage, coincide_stages
    from coincide.baselines import random_select
    from coincide.data import source_shares
    torch.set_num_threads(DEMO_THREADS)
    demo = Demo(QUICK if quick else DemoConfig(), cache, device='cpu')
    benchmark_stage(demo)
    idx, _ = coincide_stages(demo, reference_stage(demo))
    keys = {s: demo.keys[s] for s in STAGES}
    out = {'keys': keys, 'sha256': {s: sha256(ps) for s, ps in stage_files(cache, keys).items()}, 'kernels': kernels(),
           'coincide_source_shares': {k: round(float(v), 4) for k, v in source_shares(demo.train, {'COINCIDE': idx}).loc['COINCIDE'].items()}}
    out['sha256']['random'] = hashlib.sha256(random_select(len(demo.train), len(idx), seed=0).tobytes()).hexdigest()   # integer draws: expected identical
    return out


def run_in_process(name:str, # the run's name in `RUNS`
                   base:Path, # folder holding every run's cache
                   quick:bool, # the demo's --quick sizes
                   native:dict|None, # the `native` run's result, for seeding
                  ) -> dict:
    "One run of the chain in a fresh process, with its kernels and its cache seeded as `RUNS` says."
    avx2, seed_from = RUNS[name]
    cache = base/name
    if seed_from:
        for s in STAGES[:STAGES.index(seed_from) + 1]:   # copies: a cluster folder keeps its symlinks into native's extract folder
            shutil.copytree(base/'native'/native['keys'][s], cache/native['keys'][s], symlinks=True)
    env = {k: v for k, v in os.environ.items() if k not in AVX2_KERNELS} | (AVX2_KERNELS if avx2 else {})
    t = time.perf_counter()
    res = subprocess.run([sys.executable, __file__, '--chain', str(cache)] + (['--quick'] if quick else []), env=env, capture_output=True, text=True)
    if res.returncode: sys.exit(f"run {name} failed:\n{res.stderr}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out.update(avx2_kernels=avx2, seeded_up_to=seed_from, seconds=round(time.perf_counter() - t, 1))
    print(f"{name:<22} {out['seconds']:7.1f} s  kernels {out['kernels']}", flush=True)
    return out


def compare(stage:str, # a stage of `STAGES`
            a:Path, b:Path, # two demo caches
            keys_a:dict, keys_b:dict, # their stage keys
           ) -> dict: # how the two outputs compare
    "How two runs' outputs of `stage` compare (see the module docstring)."
    from sklearn.metrics import adjusted_rand_score
    fa, fb = a/keys_a[stage], b/keys_b[stage]
    if stage in ('reference', 'extract'):
        if stage == 'reference':
            from safetensors.numpy import load_file
            wa, wb = ({k: v for p in sorted((f/'model').glob('*.safetensors')) for k, v in load_file(p).items()} for f in (fa, fb))
            d = [np.abs(wa[k].astype(np.float64) - wb[k].astype(np.float64)).ravel() for k in sorted(wa)]
            d = np.concatenate(d)
        else: d = np.abs(np.load(fa/'embeddings.npy').astype(np.float64) - np.load(fb/'embeddings.npy').astype(np.float64)).ravel()
        return {'max_abs_difference': float(d.max()), 'entries_differing': int((d > 0).sum()), 'entries': int(d.size)}
    if stage == 'cluster':
        la, lb = np.load(fa/'assignments.npy'), np.load(fb/'assignments.npy')
        ca, cb = (np.load(f/'centroids.npy').astype(np.float64) for f in (fa, fb))
        return {'adjusted_rand_index': float(adjusted_rand_score(la, lb)), 'assignments_identical': bool(np.array_equal(la, lb)),
                'centroids_max_abs_difference': float(np.abs(ca - cb).max())}
    if stage == 'select-coincide':
        ia, ib = np.load(fa/'indices.npy'), np.load(fb/'indices.npy')
        return {'share_in_common': float(len(np.intersect1d(ia, ib)) / len(ia))}
    return {}


def summary_cell(r:dict, # one run's result
                 s:str, # a stage, or 'random'
                ) -> str:
    "A short table cell: 'same', 'copied', or how the stage's output differs."
    if r['seeded_up_to'] and s in STAGES[:STAGES.index(r['seeded_up_to']) + 1]: return 'copied'
    if r['same_as_native'][s]: return 'same'
    c = r['comparison_to_native'].get(s, {})
    if c.get('assignments_identical'): return f"centroids {c['centroids_max_abs_difference']:.1g}"
    return (f"max {c['max_abs_difference']:.2g}" if 'max_abs_difference' in c else f"ARI {c['adjusted_rand_index']:.3f}" if 'adjusted_rand_index' in c
            else f"{100 * c['share_in_common']:.1f} % common" if 'share_in_common' in c else 'differs')


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help="the demo's --quick sizes instead of its default ones")
    p.add_argument('--out', default=None, help='results file (default bench/results/reproducibility.json, or reproducibility_quick.json with --quick)')
    p.add_argument('--chain', default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.chain:
        print(json.dumps(chain(Path(args.chain), args.quick))); return
    out = Path(args.out or ROOT/'bench'/'results'/('reproducibility_quick.json' if args.quick else 'reproducibility.json'))
    base = Path(tempfile.mkdtemp(prefix='coincide_repro_'))
    try:
        results = {}
        for name in RUNS: results[name] = run_in_process(name, base, args.quick, results.get('native'))
        native = results['native']
        for name, r in results.items():
            r['same_as_native'] = {s: r['sha256'][s] == native['sha256'][s] for s in r['sha256']}
            r['comparison_to_native'] = {s: compare(s, base/'native', base/name, native['keys'], r['keys'])
                                         for s in STAGES if not r['same_as_native'][s]}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    import torch, faiss, transformers
    from coincide.testbed.benchmark import VERSION
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    report = {'command': ' '.join(['python', 'bench/reproducibility.py'] + sys.argv[1:]), 'quick': args.quick, 'commit': commit,
              'benchmark_version': VERSION, 'avx2_kernels': AVX2_KERNELS,
              'cpu': next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), None),
              'versions': {'torch': torch.__version__, 'numpy': np.__version__, 'faiss': faiss.__version__, 'transformers': transformers.__version__},
              'runs': results}
    out.write_text(json.dumps(report, indent=1) + '\n')
    print(f"{'run':<22}" + ''.join(f'{s:>17}' for s in (*STAGES, 'random')))
    for name, r in results.items(): print(f'{name:<22}' + ''.join(f'{summary_cell(r, s):>17}' for s in (*STAGES, 'random')))


if __name__ == '__main__':
    main()
