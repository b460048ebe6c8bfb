"""The powered comparison with the pretrained target redrawn: how much the target's draw moves COINCIDE - Random.

`bench/redraw_power.py` redraws the reference model; this redraws the other model another machine trains anew,
the pretrained target. Unit j pretrains its own target (target_seed j + 2; the powered run's is 1), keeps the
default reference model and its COINCIDE subset (cached), and trains full data, a fresh Random draw and COINCIDE
on that target with stage-2 seed 36 + j (seeds the powered run did not use).

Design, fixed before the first unit ran (recorded verbatim in bench/designs/target_redraw.md):
- 6 units, chosen for time (a target pretraining takes about 10 minutes on one core here);
- the powered run's benchmark (300 items per suite) and scored suites; each unit's relative performance is
  against its own full-data model (one seed);
- per unit D_j = rel(COINCIDE, target j) - rel(Random, target j); reported: mean, sd (ddof 1) and 95 % t-interval
  of D, and the between-target sd sqrt(max(0, sd(D)^2 - sd_seed^2)) with sd_seed the powered run's paired sd over
  its 36 seeds (one target, one reference).
- added after the run, to put numbers the README cites into this file (no new unit): the sd's 95 % chi-square
  interval, the between-target sd with each unit left out in turn, the sd of a 36-seed rerun that redraws both
  models, sqrt(sd_reference^2 + sd_target^2 + sd_seed^2 / 36), with sd_reference from redraw_power.json, and the
  between-target sd of Random's and of COINCIDE's own relative performance (the scale of one table row, against
  each method's sd over the powered run's 36 seeds).

    python bench/redraw_target.py --cache power_out/cache --units 6 --jobs 2

writes bench/results/redraw_target.csv (one row per unit and method, written as units finish) and
bench/results/redraw_target.json (the summary); `python bench/redraw_target.py --summary-only` recomputes the summary
from the committed CSVs without a cache. Random's draw reads no score, so its cache entry is keyed on the
powered run's scores stage (`--power`'s manifest) rather than on scores recomputed for every target.
"""
import json, math, time
from dataclasses import replace
from pathlib import Path
import pandas as pd
from redraw_power import POWER, between_sd, between_sd_leave_one_out, check_args, described, read_power, redraw_args, run_units, write_summary

ROOT = Path(__file__).resolve().parents[1]
FIRST_SEED = 36                                                  # the powered run used seeds 0-35


def run_unit(unit:int, # j: target_seed j + 2, stage-2 seed 36 + j
             cache:str, # the powered run's stage cache
             scores_key:str, # the powered run's scores stage key (Random's cache entries hang on it)
            ) -> list: # one row per method: unit, target_seed, seed, method, seconds, every suite's accuracy
    "Pretrain target j and train full data, a fresh Random draw and the default reference's COINCIDE subset on it."
    import torch
    from coincide.testbed.demo import DEMO_THREADS, Demo, DemoConfig, baseline_stage, benchmark_stage, coincide_stages, reference_stage, target_init_stage, target_stage
    torch.set_num_threads(DEMO_THREADS)
    t0, seed = time.perf_counter(), FIRST_SEED + unit
    demo = Demo(replace(DemoConfig(), **POWER, target_seed=unit + 2), Path(cache), 'cpu')
    benchmark_stage(demo)
    idx, _ = coincide_stages(demo, reference_stage(demo))         # the default reference: cached
    init = target_init_stage(demo)
    demo.keys['scores'] = scores_key
    rnd, _ = baseline_stage(demo, 'random', {}, seed)
    acc = {m: target_stage(demo, m, i, seed, init) for m, i in (('full', None), ('random', rnd), ('coincide', idx))}
    secs = round(time.perf_counter() - t0)
    return [{'unit': unit, 'target_seed': unit + 2, 'seed': seed, 'method': m, 'seconds': secs, **a} for m, a in acc.items()]


def summary(rows:pd.DataFrame, # one row per unit and method
            power:pd.DataFrame, # the powered run's results_per_seed.csv
            scored:list, # the powered run's scored suites
            sd_reference:float, # the between-reference sd (redraw_power.json)
           ) -> tuple: # (one row per unit: random, coincide, D; summary dict)
    "Relative performance of Random and COINCIDE against each unit's own full-data model; D and the design's statistics."
    from coincide.testbed.demo import relative_per_seed
    rel = pd.concat([g.assign(relative=relative_per_seed(g, scored)) for _, g in rows.groupby('unit')])
    out = rel.pivot(index=['unit', 'target_seed', 'seed'], columns='method', values='relative')[['random', 'coincide']].reset_index()
    out['D'] = out.coincide - out.random
    p = power.assign(relative=relative_per_seed(power, scored)).set_index(['method', 'seed'])['relative']
    d_seed = (p['coincide'] - p['random']).to_numpy()            # the powered run's paired differences (one target, 36 seeds)
    sd_seed = float(d_seed.std(ddof=1))
    sd_target = between_sd(out.D, sd_seed)
    return out, {'units': len(out), 'D': described(out.D),
                 'sd_seed_target1': sd_seed, 'sd_target': sd_target,
                 'sd_target_one_unit_left_out': between_sd_leave_one_out(out.set_index('unit').D, sd_seed),
                 'sd_target_row': {m: between_sd(out[m], float(p[m].std(ddof=1))) for m in ('random', 'coincide')},
                 'sd_rerun_both_redrawn_36_seeds': math.sqrt(sd_reference ** 2 + sd_target ** 2 + sd_seed ** 2 / len(d_seed)),
                 'random_relative': {'mean': float(out.random.mean()), 'sd': float(out.random.std(ddof=1))}}


def main():
    p = redraw_args(__doc__.splitlines()[0], 6, 'redraw_target.csv')
    p.add_argument('--reference-summary', default=str(ROOT/'bench'/'results'/'redraw_power.json'), help="redraw_power.py's summary, for the between-reference sd")
    a = p.parse_args()
    out, power_dir = Path(a.out), check_args(p, a)
    if not a.summary_only:
        scores_key = json.loads((power_dir/'manifest.json').read_text())['stage_keys']['scores']
        run_units(run_unit, (a.cache, scores_key), a.units, a.jobs, out, ['unit', 'method'])
    done = pd.read_csv(out)                                      # the summary always comes from the CSV as written (six digits)
    power, scored = read_power(power_dir)
    sd_reference = json.loads(Path(a.reference_summary).read_text())['sd_reference']
    table, res = summary(done[done.unit < a.units], power, scored, sd_reference)
    write_summary(out, res, 'redraw_target.py', f'python bench/redraw_target.py --cache {a.cache} --units {a.units} --jobs {a.jobs}', a.summary_only)
    print(table.round(2).to_string(index=False))
    print(json.dumps(res, indent=1))


if __name__ == '__main__': main()
