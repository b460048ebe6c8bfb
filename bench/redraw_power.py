"""The powered comparison with the reference model redrawn for every seed: COINCIDE - Random over reference draws.

The powered run (`bench/results/power/`) compares COINCIDE with Random over 36 stage-2 seeds, all with one reference
model (reference_seed 0) and one pretrained target, so its interval is conditional on that reference. Another
machine in effect trains another reference (bench/results/reproducibility.md). Here unit i pairs its own reference
model (reference_seed i + 1) with its own stage-2 seed i: COINCIDE selects with reference i + 1, the target (the
powered run's, target_seed 1) is instruction-tuned on that subset with seed i, and the difference to Random's seed-i
draw is one sample of COINCIDE - Random over reference draws and seeds together.

Design, fixed before the first unit ran (recorded verbatim in bench/designs/reference_redraw.md):
- 12 units (seeds 0-11, references 1-12), chosen for time (estimated at 5 minutes per unit on one core; they took
  2 minutes each, two at once);
- the powered run's benchmark (300 items per suite), scored suites and full-data accuracy pooled over its 36 seeds;
  Random's and reference 0's rows are the powered run's (`--power`, default: the folder holding --cache);
- per unit: D_i = rel(COINCIDE with reference i+1, seed i) - rel(Random, seed i) and
  E_i = rel(COINCIDE with reference i+1, seed i) - rel(COINCIDE with reference 0, seed i);
- reported: mean, sd (ddof 1) and 95 % t-interval of D and of E; the between-reference sd
  sqrt(max(0, sd(D)^2 - sd_seed^2)) with sd_seed the paired sd over the powered run's 36 seeds; and the 95 %
  prediction interval for a 36-seed rerun with a new reference, mean(D) +- t(0.975, U-1) *
  sqrt(sd_ref^2 + sd_seed^2 / 36 + sd(D)^2 / U).
- added after the run, to put numbers the README cites into this file (no new unit): each sd's 95 % chi-square
  interval (and the between-reference sd at its two ends); the between-reference sd with each unit left out in turn (its smallest and largest value); and the
  between-reference sd of COINCIDE's own relative performance, sqrt(max(0, sd(rel)^2 - sd_seed_rel^2)) with
  sd_seed_rel COINCIDE's sd over the powered run's 36 seeds. The last is the scale of one table row, which is what
  the ablation check compares; the first is the scale of a paired difference, whose seed sd (2.95) is small
  because COINCIDE and Random share a seed's data order, a pairing a new reference partly breaks.

    python bench/redraw_power.py --cache power_out/cache --units 12 --jobs 2

writes bench/results/redraw_power.csv (one row per unit, written as units finish; a rerun skips the units it holds
and a failed unit is reported at the end, after the others) and bench/results/redraw_power.json (the summary).
`python bench/redraw_power.py --summary-only` recomputes the summary from the committed CSV and the powered run's
committed folder (bench/results/power/), without a cache. The target and the benchmark come from --cache; each unit adds its
reference, extraction, clustering, selection and one target training to it.
"""
import argparse, json, math, time
from dataclasses import replace
from pathlib import Path
import numpy as np
import pandas as pd
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
POWER = dict(n_eval=300, methods=('random', 'coincide'))     # the powered run's benchmark (its methods do not enter stage keys)


def run_unit(unit:int, # seed i; the reference is reference_seed i + 1
             cache:str, # the powered run's stage cache
            ) -> dict: # unit, reference_seed, seed, seconds, the subset's size and every suite's accuracy
    "Select with reference i + 1 and instruction-tune the powered run's target on it with seed i (cached stages)."
    import torch
    from coincide.testbed.demo import DEMO_THREADS, Demo, DemoConfig, benchmark_stage, coincide_stages, reference_stage, target_init_stage, target_stage
    torch.set_num_threads(DEMO_THREADS)                          # stage keys hold the thread count: the powered run used 1
    t0 = time.perf_counter()
    demo = Demo(replace(DemoConfig(), **POWER, reference_seed=unit + 1), Path(cache), 'cpu')
    benchmark_stage(demo)
    idx, _ = coincide_stages(demo, reference_stage(demo))
    acc = target_stage(demo, 'coincide', idx, unit, target_init_stage(demo))
    return {'unit': unit, 'reference_seed': unit + 1, 'seed': unit, 'select_key': demo.keys['select-coincide'],
            'seconds': round(time.perf_counter() - t0), **acc}


def described(v:pd.Series, # (U,) one value per unit
             ) -> dict: # mean, sd (ddof 1), the 95 % t-interval of the mean and the 95 % chi-square interval of the sd
    "Mean, sd and 95 % intervals of the mean and of the sd of per-unit values."
    U, m, sd = len(v), float(v.mean()), float(v.std(ddof=1))
    half = stats.t.ppf(0.975, U - 1) * sd / math.sqrt(U)
    sd_low, sd_high = (sd * math.sqrt((U - 1) / stats.chi2.ppf(q, U - 1)) for q in (0.975, 0.025))
    return {'mean': m, 'sd': sd, 'ci_low': m - half, 'ci_high': m + half, 'sd_ci_low': sd_low, 'sd_ci_high': sd_high}


def between_sd(d:pd.Series, # (U,) per-unit differences, each with its own draw
               sd_seed:float, # the paired sd over seeds with one draw
              ) -> float: # sqrt(max(0, sd(d)^2 - sd_seed^2))
    "The sd a draw adds on top of seed noise."
    return math.sqrt(max(0.0, float(d.std(ddof=1)) ** 2 - sd_seed ** 2))


def between_sd_leave_one_out(d:pd.Series, # (U,) per-unit differences, indexed by unit
                             sd_seed:float, # the paired sd over seeds with one draw
                            ) -> dict: # smallest and largest between-draw sd with one unit left out, and the units that give them
    "How much one unit moves the between-draw sd: `between_sd` with each unit left out in turn."
    v = pd.Series({u: between_sd(d.drop(u), sd_seed) for u in d.index})
    return {'min': float(v.min()), 'min_without_unit': int(v.idxmin()), 'max': float(v.max()), 'max_without_unit': int(v.idxmax())}


def run_units(run_unit, # run_unit(unit, *extra) -> one row dict or a list of row dicts
              extra:tuple, # further arguments of run_unit
              units:int, # units 0..units-1 are wanted
              jobs:int, # units at once, each in a spawned process
              out:Path, # the CSV of finished rows: units in it are skipped, and it is rewritten as each unit finishes
              sort:list, # columns to sort the rows by
             ) -> pd.DataFrame: # every finished row
    "Run the units not yet in `out`, `jobs` at a time, writing each as it finishes; exit listing failed units after the others."
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from tqdm.auto import tqdm
    done = pd.read_csv(out) if out.is_file() else pd.DataFrame()
    todo = [u for u in range(units) if done.empty or u not in set(done.unit)]
    failed = {}
    with ProcessPoolExecutor(jobs, mp_context=mp.get_context('spawn')) as ex:
        futures = {ex.submit(run_unit, u, *extra): u for u in todo}
        for f in tqdm(as_completed(futures), total=len(futures), desc='units', unit='unit'):
            try: rows = f.result()
            except Exception as e: failed[futures[f]] = repr(e); continue
            done = pd.concat([done, pd.DataFrame(rows if isinstance(rows, list) else [rows])], ignore_index=True).sort_values(sort)
            done.to_csv(out, index=False, float_format='%.6g')
    if failed: raise SystemExit(f"units {sorted(failed)} failed ({failed}); the others are in {out}: rerun to retry the failed ones")
    return done


def summary(units:pd.DataFrame, # one row per unit: seed, suites
            power:pd.DataFrame, # the powered run's results_per_seed.csv
            scored:list, # the powered run's scored suites
           ) -> tuple: # (units with rel, D, E; summary dict)
    "D and E per unit and the design's summary statistics."
    from coincide.testbed.demo import relative_per_seed
    full = power[power.method == 'full']
    rows = pd.concat([full, units.assign(method='coincide-redrawn')], ignore_index=True)
    rel = relative_per_seed(rows, scored)[len(full):].to_numpy()
    p = power.assign(relative=relative_per_seed(power, scored)).set_index(['method', 'seed'])['relative']
    seeds = units.seed.to_numpy()
    out = units.assign(relative=rel, random=p['random'].loc[seeds].to_numpy(), coincide_ref0=p['coincide'].loc[seeds].to_numpy())
    out = out.assign(D=out.relative - out.random, E=out.relative - out.coincide_ref0)
    U = len(out)
    t = stats.t.ppf(0.975, U - 1)
    d_seed = (p['coincide'] - p['random']).to_numpy()            # the powered run's paired differences (reference 0, 36 seeds)
    sd_seed, sd_d = float(d_seed.std(ddof=1)), float(out.D.std(ddof=1))
    sd_ref = between_sd(out.D, sd_seed)
    half = t * math.sqrt(sd_ref ** 2 + sd_seed ** 2 / len(d_seed) + sd_d ** 2 / U)
    D = described(out.D)
    res = {'units': U, 'D': D, 'E': described(out.E), 'sd_seed_reference0': sd_seed, 'sd_reference': sd_ref,
           'sd_reference_from_sd_ci': [math.sqrt(max(0.0, D[k] ** 2 - sd_seed ** 2)) for k in ('sd_ci_low', 'sd_ci_high')],
           'sd_reference_one_unit_left_out': between_sd_leave_one_out(out.set_index('unit').D, sd_seed),
           'sd_reference_row': between_sd(out.relative, float(p['coincide'].std(ddof=1))),
           'prediction_36_seeds': [float(out.D.mean()) - half, float(out.D.mean()) + half],
           'D_reference0_same_seeds': described(out.coincide_ref0 - out.random)}
    return out, res


def redraw_args(description:str, # the script's one-line description
                units:int, # units the design asks for
                out:str, # the CSV's name in bench/results/
               ) -> argparse.ArgumentParser: # the arguments both redraw scripts take
    "The command line shared by the redraw scripts: the powered run's cache and folder, units, jobs, output, summary only."
    p = argparse.ArgumentParser(description=description)
    p.add_argument('--cache', default=None, help="the powered run's stage cache (OUT/cache of `coincide demo --preset power`); needed to run units")
    p.add_argument('--units', type=int, default=units)
    p.add_argument('--jobs', type=int, default=2, help='units at once (one torch thread each)')
    p.add_argument('--power', default=None, help="the powered run's output folder (results_per_seed.csv, suites.csv, manifest.json; default: the folder holding --cache, or bench/results/power with --summary-only)")
    p.add_argument('--out', default=str(ROOT/'bench'/'results'/out))
    p.add_argument('--summary-only', action='store_true', help='run no unit and leave --out as it is: recompute the summary (.json) from it')
    return p


def check_args(p, # the argument parser, for its errors
               a, # parsed arguments of `redraw_args`
               need:tuple=('results_per_seed.csv', 'suites.csv', 'manifest.json'), # files the powered run's folder must hold
              ) -> Path: # the powered run's output folder
    "Refuse what cannot run (units without --cache; a summary without its CSV or the JSON holding the run's command); return the powered run's folder."
    out = Path(a.out)
    if a.summary_only:
        if not out.is_file(): p.error(f"--summary-only: {out} does not exist: run the units first (with --cache)")
        js = out.with_suffix('.json')
        if not js.is_file() or 'command' not in json.loads(js.read_text()):
            p.error(f"--summary-only: {js} holds no 'command' of the run that wrote {out}: run the units (with --cache) to write it")
    elif not a.cache: p.error("pass --cache (the powered run's stage cache) to run units, or --summary-only")
    d = Path(a.power) if a.power else ROOT/'bench'/'results'/'power' if a.summary_only else Path(a.cache).resolve().parent
    for f in need:
        if not (d/f).is_file(): p.error(f"{d} holds no {f}: pass --power, the output folder of the powered run whose cache --cache is")
    return d


def write_summary(out:Path, # the units' CSV; the summary goes next to it as .json
                  res:dict, # the summary
                  script:str, # the script's name in bench/
                  command:str, # the command that ran the units
                  summary_only:bool): # recomputed from the CSV: keep the JSON's run command, add this one
    "Write the summary JSON with the command that ran the units (and, if recomputed, the one that recomputed it)."
    js = out.with_suffix('.json')
    if summary_only: res |= {'command': json.loads(js.read_text())['command'], 'summary_command': f'python bench/{script} --summary-only'}
    else: res['command'] = command
    js.write_text(json.dumps(res, indent=1) + '\n')


def read_power(power_dir:Path, # the powered run's output folder
              ) -> tuple: # (results_per_seed.csv as a DataFrame, the run's scored suites)
    "The powered run's per-seed results and the suites it scored."
    suites = pd.read_csv(power_dir/'suites.csv')
    return pd.read_csv(power_dir/'results_per_seed.csv'), suites.suite[suites.scored].tolist()


def main():
    p = redraw_args(__doc__.splitlines()[0], 12, 'redraw_power.csv')
    a = p.parse_args()
    out, power_dir = Path(a.out), check_args(p, a)
    if not a.summary_only: run_units(run_unit, (a.cache,), a.units, a.jobs, out, ['unit'])
    done = pd.read_csv(out)                                      # the summary always comes from the CSV as written (six digits)
    if a.summary_only and 'shared_with_reference0' not in done:
        p.error(f"{out} has no shared_with_reference0 column (a run that stopped before its summary): rerun the units with --cache")
    power, scored = read_power(power_dir)
    mine = done[done.unit < a.units]
    table, res = summary(mine.drop(columns=['shared_with_reference0'], errors='ignore'), power, scored)
    if a.summary_only: table['shared_with_reference0'] = mine.shared_with_reference0.to_numpy()
    else:
        ref0 = np.load(Path(a.cache)/json.loads((power_dir/'manifest.json').read_text())['stage_keys']['select-coincide']/'indices.npy')
        table['shared_with_reference0'] = [len(np.intersect1d(np.load(Path(a.cache)/k/'indices.npy'), ref0)) / len(ref0) for k in table.select_key]
        pd.concat([table, done[done.unit >= a.units]]).to_csv(out, index=False, float_format='%.6g')   # rows beyond --units are kept
    res['shared_with_reference0'] = {'mean': float(table.shared_with_reference0.mean()), 'min': float(table.shared_with_reference0.min()),
                                     'max': float(table.shared_with_reference0.max())}
    write_summary(out, res, 'redraw_power.py', f'python bench/redraw_power.py --cache {a.cache} --units {a.units} --jobs {a.jobs}', a.summary_only)
    print(table[['unit', 'reference_seed', 'seed', 'relative', 'random', 'coincide_ref0', 'D', 'E', 'shared_with_reference0']].round(2).to_string(index=False))
    print(json.dumps(res, indent=1))


if __name__ == '__main__': main()
