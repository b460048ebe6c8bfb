"""Calibrate the demo's regime with Random and full data only, before any other method runs on a benchmark version.

For one demo configuration (benchmark size N and the rest of `DemoConfig`), build the demo's benchmark and its
pretrained target through the demo's own cached stages, train the target on all records and on Random subsets of
each fraction for each seed (one epoch, `coincide.testbed.training.STAGE2`), and write every (fraction, seed) row with its
relative performance (the demo's definition, `coincide.testbed.demo.relative_per_seed`: mean over the scored suites of
subset / full data, full data's accuracy pooled over seeds). The designs of attempts 10-14 are in bench/designs/calibration.md.
`--jobs 2` trains the targets in two processes (`coincide.testbed.demo.train_targets`, with --threads torch threads each).

    python bench/calibrate.py --n-pretrain 16500 --seeds 10 --jobs 2 --attempt 11

Acceptance: Random 20 % reaches 93-97 % of full data, Random 5 % at most 90 %.
"""
import argparse, hashlib, json, os, subprocess, time
from dataclasses import asdict, replace
from pathlib import Path
import numpy as np
import pandas as pd
import torch
from coincide.testbed.benchmark import VERSION, benchmark_meta
from coincide.baselines import random_select
from coincide.core import budget_size, pick_device
from coincide.testbed.demo import (DemoConfig, Demo, benchmark_stage, target_init_stage, train_targets, scored_suites,
                           relative_per_seed)
from coincide.testbed.training import STAGE1, STAGE2, VISION
from coincide.testbed.models import get_preset, PRESETS

FRACTIONS = (0.05, 0.1, 0.2, 0.4, 0.6)


def design_hash(cfg:DemoConfig, bench_params:dict) -> str:
    "A hash of everything the regime depends on: benchmark params, demo sizes, training settings, target size."
    demo = {k: v for k, v in asdict(cfg).items() if k != 'methods' and not (k == 'reference_seed' and v == 0)}   # seed 0: the hash it had before the seed was a setting
    blob = {'benchmark': bench_params, 'demo': demo,
            'stage1': asdict(STAGE1), 'stage2': asdict(STAGE2), 'vision': asdict(VISION),
            'target': asdict(get_preset(cfg.target_preset))}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:12]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n-train', type=int, default=DemoConfig().n_train)
    p.add_argument('--n-pretrain', type=int, default=DemoConfig().n_pretrain, help="grounded records the target is pretrained on")
    p.add_argument('--seeds', type=int, default=3)
    p.add_argument('--first-seed', type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1 (fresh seeds for a confirmation)")
    p.add_argument('--fractions', type=float, nargs='+', default=FRACTIONS)
    p.add_argument('--cache', default=os.path.expanduser('~/.cache/coincide/calibration'))
    p.add_argument('--out', default='bench/results/calibration.csv')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--device', default=None)
    p.add_argument('--target-seed', type=int, default=DemoConfig().target_seed, help="seed of the pretrained target (a probe of the target's draw)")
    p.add_argument('--attempt', required=True, help="the attempt number (or a probe's name) written in the rows' first column")
    p.add_argument('--jobs', type=int, default=1, help="processes that train targets in parallel (each with --threads threads; `coincide.testbed.demo.train_targets`)")
    p.add_argument('--target', default=None, metavar='WIDTH,LAYERS', help="a target of another size (a probe): the language model's width and depth")
    a = p.parse_args()
    if a.target and a.jobs > 1: p.error('--target is a probe of one process: run it with --jobs 1')
    torch.set_num_threads(a.threads)
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()
    cfg = replace(DemoConfig(), n_train=a.n_train, n_pretrain=a.n_pretrain, seeds=a.seeds, methods=('random',), target_seed=a.target_seed)
    if a.target:
        w, l = map(int, a.target.split(','))
        PRESETS[f'target-{w}x{l}'] = replace(get_preset('target'), text_hidden=w, text_layers=l, text_intermediate=2 * w)
        cfg = replace(cfg, target_preset=f'target-{w}x{l}')
    demo = Demo(cfg, Path(a.cache), pick_device(a.device).type)
    t0 = time.perf_counter()
    benchmark_stage(demo)
    init = target_init_stage(demo)
    print(f'benchmark and pretrained target: {time.perf_counter() - t0:.0f} s', flush=True)
    n, tasks, fractions = len(demo.train), [], []
    for seed in range(a.first_seed, a.first_seed + cfg.seeds):
        tasks.append(('full', None, seed)); fractions.append(1.0)
        for f in a.fractions:
            tasks.append((f'random-{f:g}', random_select(n, budget_size(n, f), seed), seed)); fractions.append(f)
    accuracies = train_targets(demo, tasks, init, a.jobs)
    rows = [{'method': m, 'fraction': f, 'seed': seed, **acc} for (m, _, seed), f, acc in zip(tasks, fractions, accuracies)]
    per_seed = pd.DataFrame(rows)
    suites = scored_suites(per_seed, demo.setup.chance, {s: len(r) for s, r in demo.setup.records.items()})
    scored = suites.index[suites.scored].tolist()
    per_seed['relative'] = relative_per_seed(per_seed, scored)
    meta = benchmark_meta(demo.bench)
    per_seed = per_seed.assign(attempt=a.attempt, benchmark_version=VERSION, design_hash=design_hash(cfg, meta['params']), n_train=n,
                               n_eval=cfg.n_eval, n_pretrain=meta['params']['n_pretrain'], scored_suites=len(scored),
                               device=demo.device, threads=a.threads, commit=commit, target_seed=cfg.target_seed,
                               target=f"{get_preset(cfg.target_preset).text_hidden}x{get_preset(cfg.target_preset).text_layers}")
    out = Path(a.out)
    old = pd.read_csv(out) if out.is_file() else None
    allrows = per_seed if old is None else pd.concat([old, per_seed], ignore_index=True)
    allrows.to_csv(out, index=False, float_format='%.6g')
    summary = per_seed.groupby('fraction')['relative'].agg(['mean', lambda s: s.std(ddof=1), 'count'])
    summary.columns = ['relative', 'sd', 'seeds']
    print(suites.round(3).to_string())
    print(summary.round(2).to_string())
    r20, r5 = summary.relative.get(0.2, np.nan), summary.relative.get(0.05, np.nan)
    print(f'N={n} version {VERSION} design {per_seed.design_hash[0]}: Random 20 % {r20:.1f} (window 93-97), Random 5 % {r5:.1f} (at most 90): '
          f"{'ACCEPTED' if 93 <= r20 <= 97 and r5 <= 90 else 'REJECTED'}; {time.perf_counter() - t0:.0f} s")


if __name__ == '__main__': main()
