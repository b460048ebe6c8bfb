"""Probe (not a calibration attempt): a target pretrained on grounded instruction records (images and questions) from a
disjoint pool, the training records of the same benchmark generator with another seed, instead of image-free text; then
one epoch of stage 2 on full data and on Random 5 % and 20 % of the calibration pool (seed 0).

    python bench/probe_grounded.py --cache ~/.cache/coincide/calibration --n-train 5000 --n-grounded 5000
"""
import argparse, json, os, time
from dataclasses import replace
from pathlib import Path
import numpy as np
import torch
from coincide.baselines import random_select
from coincide.testbed.benchmark import make, load_benchmark
from coincide.core import budget_size
from coincide.testbed.demo import DemoConfig, Demo, benchmark_stage, scored_suites, relative_per_seed
from coincide.testbed.models import build_tiny_llava, save_vlm
from coincide.testbed.training import (STAGE1, STAGE2, VISION, TARGET_SEED, concat_encoded, encode_records, pretrain_vision,
                               train_vlm, finetune, evaluate_vlm)
import pandas as pd


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--cache', default=os.path.expanduser('~/.cache/coincide/calibration'))
    p.add_argument('--n-train', type=int, default=DemoConfig().n_train)
    p.add_argument('--n-grounded', type=int, default=5000)
    p.add_argument('--out', default=None, help='CSV of the rows (default: print only)')
    a = p.parse_args()
    torch.set_num_threads(1)
    demo = Demo(replace(DemoConfig(), n_train=a.n_train, methods=('random',)), Path(a.cache), 'cpu')
    benchmark_stage(demo); s = demo.setup
    other = make(Path(a.cache)/f'grounded-{a.n_grounded}', a.n_grounded, 1, 1, 10)      # seed 1: a disjoint pool
    grounded = encode_records(s.processor, load_benchmark(other).train, other, desc='grounded')
    t = time.perf_counter()
    model = build_tiny_llava(demo.cfg.target_preset, s.processor.tokenizer, TARGET_SEED)
    pretrain_vision(model, s.captions, VISION, TARGET_SEED)
    train_vlm(model, concat_encoded(s.captions, grounded), None, STAGE1, TARGET_SEED, s.processor.tokenizer.pad_token_id)
    init = Path(a.cache)/f'grounded-target-{a.n_grounded}'; save_vlm(model, s.processor, init)
    print(f'grounded pretraining: {time.perf_counter() - t:.0f} s', flush=True)
    n, rows = len(demo.train), []
    for name, f in (('full', 1.0), ('random-0.05', 0.05), ('random-0.2', 0.2)):
        idx = None if f == 1 else random_select(n, budget_size(n, f), 0)
        acc = evaluate_vlm(finetune(s, init, idx, STAGE2, 0, 'cpu'), s.processor, s.suites, s.records, s.chance)['accuracy']
        rows.append({'method': name, 'fraction': f, 'seed': 0, **acc.to_dict()})
        print(f'{name}: mean accuracy {acc.mean():.3f}', flush=True)
    ps = pd.DataFrame(rows)
    sc = scored_suites(ps, s.chance, {k: len(v) for k, v in s.records.items()})
    ps['relative'] = relative_per_seed(ps, sc.index[sc.scored].tolist())
    print(ps[['method', 'relative']].to_string(), f'\nscored suites: {int(sc.scored.sum())}')
    if a.out: ps.to_csv(a.out, index=False, float_format='%.6g')


if __name__ == '__main__': main()
