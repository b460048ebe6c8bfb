"""Time target training on the CPU benchmark against the demo's budgets; print accuracies and ratios.

Usage: python bench/bench_training.py [--bench DIR] [--threads 2] [--seeds 0] [--out results.json]
                                     [--no-stage0] [--verification]

Budgets on the 2-core reference machine: stage-2 training of the target on the full 10K records
<= 180 s; one 20 % run <= 45 s. Prints wall and process CPU seconds of each step (the CPU time is
a fairer measure when other work shares the machine), each budget's ratio, peak memory, and the
per-suite accuracy of the full-data and 20 % models with relative performance. `--no-stage0`
skips the vision tower's pre-training (to measure what it adds); `--verification` also scores the
full-data models on yes/no verification (digits, photos, words, colours), which has no suite.
"""
import argparse, json, resource, sys, time
from pathlib import Path
import numpy as np
import torch


def timed(label:str, fn, log:dict):
    "Run `fn()`, record and print its wall and CPU seconds under `label`; return its result."
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    log[label] = {'wall_s': round(time.perf_counter() - t, 2), 'cpu_s': round(time.process_time() - c, 2)}
    print(f"{label:<28} wall {log[label]['wall_s']:8.1f} s   cpu {log[label]['cpu_s']:8.1f} s", flush=True)
    return out


def verification_suites(setup, n:int=200) -> tuple: # (suite -> EncodedSet, suite -> records)
    "Yes/no verification records from the evaluation split (digits, photos, words, colours), images in a temporary folder."
    import tempfile
    from coincide.testbed.benchmark import TASKS, to_record, save_png
    from coincide.testbed.training import encode_suites
    root, recs = Path(tempfile.mkdtemp(prefix='bench-verification-')), {}
    for i, task in enumerate(('digit_verify', 'photo_verify', 'word_verify', 'exists')):
        rng = np.random.default_rng([99, i]); (root/task).mkdir(); recs[task] = []
        for j in range(n):
            s = TASKS[task][0](rng, 'eval'); save_png(root/task/f'{j}.png', s.image)
            recs[task].append(to_record(s, f'{task}-{j}', f'{task}/{j}.png', benchmark=task))
    return encode_suites(setup.processor, recs, root), recs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--bench', default=None, help='benchmark folder (default: make(None) cache, 10K records)')
    p.add_argument('--threads', type=int, default=2, help='torch threads (the budget machine has 2 cores)')
    p.add_argument('--seeds', type=int, nargs='+', default=[0], help='seeds of the stage-2 runs')
    p.add_argument('--frac', type=float, default=0.2, help='random subset fraction')
    p.add_argument('--out', default=None, help='write the timings and tables as JSON here')
    p.add_argument('--no-stage0', action='store_true', help='stage 1 without pretraining the vision tower first')
    p.add_argument('--verification', action='store_true', help='also score the full-data models on yes/no verification')
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from coincide.testbed.benchmark import make
    from coincide.testbed.models import count_parameters
    from coincide.testbed.training import setup_benchmark, stage1, finetune, evaluate_vlm, relative_performance, STAGE1, STAGE2, VISION
    log, res = {}, {'threads': a.threads, 'stage1': str(STAGE1), 'stage2': str(STAGE2)}
    done = a.bench is not None and (Path(a.bench)/'benchmark.json').is_file()
    bench = Path(a.bench) if done else timed('benchmark (make or reuse)', lambda: make(a.bench), log)
    setup = timed('tokenizer + encoding', lambda: setup_benchmark(bench), log)
    import tempfile; work = Path(tempfile.mkdtemp(prefix='bench-training-'))/'stage1'
    m = timed('stage 1 (captions)', lambda: stage1(setup, 'target', out_dir=work, vision=None if a.no_stage0 else VISION), log)
    res['stage0'] = not a.no_stage0
    probes = verification_suites(setup) if a.verification else None
    res['params'] = count_parameters(m)
    n = len(setup.train)
    res['tables'] = {}
    for seed in a.seeds:
        idx = np.sort(np.random.default_rng(seed).choice(n, int(a.frac * n), replace=False))
        for name, ix in (('full', None), (f'random{int(100 * a.frac)}', idx)):
            model = timed(f'stage 2 {name} seed {seed}', lambda: finetune(setup, work, ix, seed=seed), log)
            tab = timed(f'evaluate {name} seed {seed}', lambda: evaluate_vlm(model, setup.processor, setup.suites, setup.records, setup.chance), log)
            res['tables'][f'{name}/{seed}'] = tab.accuracy.to_dict()
            if probes and name == 'full':
                vt = evaluate_vlm(model, setup.processor, *probes, {t: 0.5 for t in probes[1]})
                res.setdefault('verification', {})[str(seed)] = vt.accuracy.to_dict(); print(vt.T.round(3).to_string(), flush=True)
            print(tab.T.round(3).to_string(), flush=True)
    full = {s: np.mean([res['tables'][f'full/{k}'][s] for k in a.seeds]) for s in setup.suites}
    sub = {s: np.mean([res['tables'][f'random{int(100 * a.frac)}/{k}'][s] for k in a.seeds]) for s in setup.suites}
    res['relative_performance'] = relative_performance(sub, full)
    res['chance'] = setup.chance
    s0 = a.seeds[0]
    budgets = {f'stage 2 full seed {s0}': 180, f'stage 2 random{int(100 * a.frac)} seed {s0}': 45}
    print(f"\nrelative performance of random {a.frac:.0%}: {res['relative_performance']:.1f} %")
    for k, b in budgets.items(): print(f"{k}: {log[k]['wall_s']:.0f} s wall / {b} s budget = {log[k]['wall_s'] / b:.2f}  (cpu {log[k]['cpu_s']:.0f} s)")
    print(f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    res['timings'] = log
    if a.out: Path(a.out).write_text(json.dumps(res, indent=1, default=float))
    return 0


if __name__ == '__main__': sys.exit(main())
