"""Probe stage 2 on a calibration pool (seed 0): the full-data target after more epochs, and full data and Random 20 %
at other learning rates, each from the cached pretrained target of `bench/calibrate.py`. Not a calibration attempt.

    python bench/probe_stage2.py --cache ~/.cache/coincide/calibration --n-train 5000 --epochs 2 3 --lr 0.003
"""
import argparse, json, os, time
from dataclasses import replace
from pathlib import Path
import torch
from coincide.baselines import random_select
from coincide.core import budget_size
from coincide.testbed.demo import DemoConfig, Demo, benchmark_stage, target_init_stage
from coincide.testbed.training import finetune, evaluate_vlm, STAGE2


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--cache', default=os.path.expanduser('~/.cache/coincide/calibration'))
    p.add_argument('--n-train', type=int, default=DemoConfig().n_train)
    p.add_argument('--epochs', type=float, nargs='*', default=[2, 3])
    p.add_argument('--lr', type=float, nargs='*', default=[3e-3])
    p.add_argument('--out', default=None, help='JSON file for the accuracies (default: print only)')
    a = p.parse_args()
    torch.set_num_threads(1)
    demo = Demo(replace(DemoConfig(), n_train=a.n_train, methods=('random',)), Path(a.cache), 'cpu')
    benchmark_stage(demo); init = target_init_stage(demo)
    s, n, out = demo.setup, len(demo.train), {}
    runs = [(f'full-epochs{e:g}', None, replace(STAGE2, epochs=e)) for e in a.epochs]
    runs += [(f'{name}-lr{lr:g}', idx, replace(STAGE2, lr=lr)) for lr in a.lr
             for name, idx in (('full', None), ('random20', random_select(n, budget_size(n, 0.2), 0)))]
    for name, idx, cfg in runs:
        t = time.perf_counter()
        acc = evaluate_vlm(finetune(s, init, idx, cfg, 0, 'cpu'), s.processor, s.suites, s.records, s.chance)['accuracy']
        out[name] = acc.to_dict()
        print(f'{name}: mean accuracy {acc.mean():.3f} ({time.perf_counter() - t:.0f} s)', flush=True)
    if a.out: Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == '__main__': main()
