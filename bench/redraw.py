"""What a seed does not redraw: the demo's COINCIDE-against-Random comparison with other reference models and targets.

A demo seed varies stage 2 (data order, initialisation) and Random's draw; the reference model and the pretrained
target are trained once and shared, so the demo's intervals are conditional on them. Another machine in effect
redraws both (bench/results/reproducibility.md). This script reruns the default demo's settings with full data,
Random and COINCIDE only, for other `reference_seed` / `target_seed` pairs, and writes one row per draw: Random's
and COINCIDE's relative performance (mean and sd over seeds, ddof 1), COINCIDE - Random with its paired 95 %
interval, and how much of COINCIDE's subset it shares with the first draw's (list the default draw, 0,1, first).
Each draw's results_per_seed.csv is copied to --per-seed DIR/reference{R}-target{T}.csv.

    python bench/redraw.py --cache /tmp/demo7/cache --draws 0,1 1,1 2,1 0,2 --out bench/results/redraw.csv

Each draw runs in its own folder under --work with `cache` linked to --cache (its stages are added to that cache),
so the benchmark, and the target when its seed is shared, are trained once.
"""
import argparse, json, shutil, time
from dataclasses import replace
from pathlib import Path
import numpy as np
import pandas as pd
from coincide.testbed.demo import DemoConfig, run_demo


def draw_row(cfg:DemoConfig, folder:Path, seconds:float) -> dict:
    "One draw's summary from its results files."
    res = pd.read_csv(folder/'results.csv').set_index('method')
    return {'reference_seed': cfg.reference_seed, 'target_seed': cfg.target_seed, 'seeds': int(res.loc['coincide', 'seeds']),
            'random': res.loc['random', 'relative'], 'random_sd': res.loc['random', 'relative_sd'],
            'coincide': res.loc['coincide', 'relative'], 'coincide_sd': res.loc['coincide', 'relative_sd'],
            'diff': res.loc['coincide', 'diff_vs_random'], 'diff_ci_low': res.loc['coincide', 'diff_ci_low'],
            'diff_ci_high': res.loc['coincide', 'diff_ci_high'],
            'scored_suites': int(pd.read_csv(folder/'suites.csv').scored.sum()), 'seconds': round(seconds)}


def coincide_subset(folder:Path) -> tuple: # ((m,) int64 COINCIDE's selection, (m,) its records' sources)
    "The COINCIDE selection a draw's demo trained on and the sources of its records (from the manifest's stage keys)."
    keys = json.loads((folder/'manifest.json').read_text())['stage_keys']
    idx = np.load(folder/'cache'/keys['select-coincide']/'indices.npy')
    train = json.loads((folder/'cache'/keys['benchmark']/'train.json').read_text())
    return idx, np.array([train[i]['source'] for i in idx])


def main():
    "Run every draw (cached), then write one summary row per draw and copy each draw's per-seed rows."
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--cache', required=True, help="a stage cache to share (e.g. the default demo's OUT/cache)")
    p.add_argument('--draws', nargs='+', default=['0,1', '1,1', '2,1', '0,2'], metavar='REFERENCE_SEED,TARGET_SEED')
    p.add_argument('--seeds', type=int, default=3)
    p.add_argument('--work', default='/tmp/coincide-redraw', help='one output folder per draw')
    p.add_argument('--jobs', type=int, default=None)
    p.add_argument('--out', default='bench/results/redraw.csv')
    p.add_argument('--per-seed', default='bench/results/redraw', help="folder for each draw's results_per_seed.csv")
    a = p.parse_args()
    rows, first = [], None
    for d in a.draws:
        r, t = map(int, d.split(','))
        cfg = replace(DemoConfig(), methods=('random', 'coincide'), seeds=a.seeds, reference_seed=r, target_seed=t)
        folder = Path(a.work)/f'reference{r}-target{t}'
        folder.mkdir(parents=True, exist_ok=True)
        link, cache = folder/'cache', Path(a.cache).resolve()
        if not link.exists(): link.symlink_to(cache)
        if link.resolve() != cache: p.error(f'{link} points at {link.resolve()}, not at --cache {cache}: use another --work')
        t0 = time.perf_counter()
        run_demo(cfg, folder, jobs=a.jobs)
        row, (subset, sources) = draw_row(cfg, folder, time.perf_counter() - t0), coincide_subset(folder)
        first = subset if first is None else first
        rows.append({**row, 'shared_with_first': len(np.intersect1d(subset, first)) / len(subset),
                     'digits_share': np.mean(sources == 'digits'), 'words_share': np.mean(sources == 'words')})
        Path(a.per_seed).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder/'results_per_seed.csv', Path(a.per_seed)/f'{folder.name}.csv')
        print(pd.DataFrame(rows).round(2).to_string(), flush=True)
        pd.DataFrame(rows).to_csv(a.out, index=False, float_format='%.6g')


if __name__ == '__main__': main()
