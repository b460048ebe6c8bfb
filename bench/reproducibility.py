"""Which outputs of the demo's selection chain stay byte-identical when the CPU's floating-point kernels differ (run by hand).

Two machines "of the same kind" can still run different kernels: torch's ATen picks AVX-512 or AVX2 code, MKL and the
OpenBLAS bundled with numpy and faiss pick theirs from the CPU model. This probe emulates a second machine on one: it
runs the demo's selection chain (benchmark, reference model, extraction, k-means, COINCIDE's selection, a Random draw)

- `native`: with this machine's own kernels, from an empty cache;
- `native-again`: the same, from another empty cache (same machine, same kernels: the chain's determinism);
- `avx2`: with AVX2 kernels forced everywhere (`ATEN_CPU_CAPABILITY=avx2`, `MKL_ENABLE_INSTRUCTIONS=AVX2`,
  `OPENBLAS_CORETYPE=Haswell`), from an empty cache;
- `avx2-from-reference`, `avx2-from-extract`, `avx2-from-cluster`: with AVX2 kernels, on a cache seeded with `native`'s
  stages up to the named one, so that each later stage runs alone on identical inputs: where a difference starts.

Every run is a fresh process with one torch thread (the demo's `DEMO_THREADS`). For each stage it records the sha256 of
its output and, against `native`, whether the bytes match and how far apart they are (weights and embeddings: the
largest absolute difference; k-means: the adjusted Rand index of the assignments; selections: the shared share), and the
source shares of COINCIDE's subset.

    python bench/reproducibility.py [--quick] [--out bench/results/reproducibility.json]

The forced-AVX2 runs stand in for another machine's kernels; they are not that machine. On a CPU without AVX-512 the
`avx2` run uses the machine's own kernels and the probe shows only determinism.
"""
import argparse, hashlib, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np

AVX2 = {'ATEN_CPU_CAPABILITY': 'avx2', 'MKL_ENABLE_INSTRUCTIONS': 'AVX2', 'OPENBLAS_CORETYPE': 'Haswell'}
STAGES = ('benchmark', 'reference', 'extract', 'cluster', 'select-coincide')
RUNS = {'native': ({}, None), 'native-again': ({}, None), 'avx2': (AVX2, None),
        'avx2-from-reference': (AVX2, 'reference'), 'avx2-from-extract': (AVX2, 'extract'), 'avx2-from-cluster': (AVX2, 'cluster')}


def sha256(paths) -> str:
    "One sha256 over the bytes of `paths`, in order."
    h = hashlib.sha256()
    for p in paths: h.update(Path(p).read_bytes())
    return h.hexdigest()


def stage_outputs(cache:Path, keys:dict) -> dict:
    "Stage name -> the files that stage produced, in a fixed order."
    folder = {s: cache/keys[s] for s in STAGES}
    bench = folder['benchmark']
    return {'benchmark': [bench/f for f in ('train.json', 'pretrain.json', 'captions.json', 'truth.json')] + sorted((bench/'images').rglob('*.png')),
            'reference': sorted((folder['reference']/'model').glob('*.safetensors')),
            'extract': [folder['extract']/'embeddings.npy'],
            'cluster': [folder['cluster']/'assignments.npy', folder['cluster']/'centroids.npy'],
            'select-coincide': [folder['select-coincide']/'indices.npy']}


def worker(cache:Path, quick:bool) -> dict:
    "Run the chain in this process on `cache` (reusing any finished stage there); return the stage keys and hashes."
    import torch
    from coincide.demo import QUICK, DemoConfig, Demo, DEMO_THREADS, benchmark_stage, reference_stage, coincide_stages
    from coincide.baselines import random_select
    from coincide.data import source_shares
    torch.set_num_threads(DEMO_THREADS)
    demo = Demo(QUICK if quick else DemoConfig(), cache, device='cpu')
    benchmark_stage(demo)
    idx, _ = coincide_stages(demo, reference_stage(demo))
    rnd = random_select(len(demo.train), len(idx), seed=0)
    keys = {s: demo.keys[s] for s in STAGES}
    out = {'keys': keys, 'sha256': {s: sha256(ps) for s, ps in stage_outputs(cache, keys).items()},
           'cpu_capability': torch.backends.cpu.get_cpu_capability()}
    out['sha256']['random'] = hashlib.sha256(rnd.tobytes()).hexdigest()
    out['coincide_source_shares'] = {k: round(float(v), 4) for k, v in source_shares(demo.train, {'COINCIDE': idx}).loc['COINCIDE'].items()}
    return out


def run(name:str, env:dict, seed_from:str|None, base:Path, quick:bool, native:dict|None) -> dict:
    "One run in a fresh process, its cache seeded with `native`'s stages up to `seed_from`."
    cache = base/name
    if seed_from:
        for s in STAGES[:STAGES.index(seed_from) + 1]: shutil.copytree(base/'native'/native['keys'][s], cache/native['keys'][s], symlinks=True)
    t = time.perf_counter()
    cmd = [sys.executable, __file__, '--worker', str(cache)] + (['--quick'] if quick else [])
    res = subprocess.run(cmd, env={**os.environ, **env}, check=True, capture_output=True, text=True)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out.update(env=env, seeded_up_to=seed_from, seconds=round(time.perf_counter() - t, 1))
    print(f"{name:<22} {out['seconds']:7.1f} s  cpu capability {out['cpu_capability']}", flush=True)
    return out


def distance(stage:str, a:Path, b:Path, keys_a:dict, keys_b:dict) -> float|None:
    "How far stage outputs of two caches are apart (see the module docstring); None where not measured."
    import torch
    from safetensors.torch import load_file
    fa, fb = a/keys_a[stage], b/keys_b[stage]
    if stage == 'reference':
        wa, wb = (load_file(sorted((f/'model').glob('*.safetensors'))[0]) for f in (fa, fb))
        return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    if stage == 'extract':
        return float(np.abs(np.load(fa/'embeddings.npy').astype(np.float32) - np.load(fb/'embeddings.npy').astype(np.float32)).max())
    if stage == 'cluster':
        from sklearn.metrics import adjusted_rand_score
        return float(adjusted_rand_score(np.load(fa/'assignments.npy'), np.load(fb/'assignments.npy')))
    if stage == 'select-coincide':
        ia, ib = np.load(fa/'indices.npy'), np.load(fb/'indices.npy')
        return float(len(np.intersect1d(ia, ib)) / len(ia))
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help="the demo's --quick sizes instead of its default ones")
    p.add_argument('--out', default=str(Path(__file__).resolve().parent/'results'/'reproducibility.json'))
    p.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(Path(args.worker), args.quick))); return
    base = Path(tempfile.mkdtemp(prefix='coincide_repro_'))
    try:
        results = {}
        for name, (env, seed_from) in RUNS.items():
            results[name] = run(name, env, seed_from, base, args.quick, results.get('native'))
        native = results['native']
        for name, r in results.items():
            r['same_as_native'] = {s: r['sha256'][s] == native['sha256'][s] for s in r['sha256']}
            r['distance_to_native'] = {s: distance(s, base/'native', base/name, native['keys'], r['keys'])
                                       for s in STAGES if not r['same_as_native'][s]}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    import torch, numpy, faiss, transformers
    report = {'command': ' '.join(['python', 'bench/reproducibility.py'] + sys.argv[1:]), 'quick': args.quick,
              'cpu': next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), None),
              'versions': {'torch': torch.__version__, 'numpy': numpy.__version__, 'faiss': faiss.__version__, 'transformers': transformers.__version__},
              'distances': 'reference: largest |weight difference|; extract: largest |embedding difference|; cluster: adjusted Rand index; '
                           'select-coincide: share of indices in common',
              'runs': results}
    Path(args.out).write_text(json.dumps(report, indent=1) + '\n')
    print(f"{'run':<22}" + ''.join(f'{s:>17}' for s in (*STAGES, 'random')))
    for name, r in results.items():
        cells = ['same' if r['same_as_native'][s] else 'differs' if r['distance_to_native'].get(s) is None
                 else f"{r['distance_to_native'][s]:.3g}" for s in (*STAGES, 'random')]
        print(f'{name:<22}' + ''.join(f'{c:>17}' for c in cells))


if __name__ == '__main__':
    main()
