"""The headroom study of bench/designs/headroom.md: oracle arms, Random and COINCIDE over draws of reference and target.

    python bench/headroom.py --work WORK                      # eight units, three seeds, every arm (hours on 2 cores)
    python bench/headroom.py --work WORK --selections-only    # references, clusters and selections only: agreement and coverage

Every stage is cached in WORK/cache, so an interrupted run resumes where it stopped: run the same command again. Each
finished unit is appended to the result files at once; the comparison over units is written only for the design's
units 0-7 with three seeds.
"""
import argparse, shlex, sys, time
from pathlib import Path
import pandas as pd

from coincide.testbed.portable import prepare_environment
prepare_environment()                                                        # portable kernels, before torch loads
from coincide.core import write_manifest, atomic_write
from coincide.testbed.headroom import (ARMS, UNITS, DESIGN_COMMIT, run_unit, unit_agreement, unit_coverage,
                                       unit_relative, comparison_diffs, holm_intervals, headroom_verdict, moving_suites,
                                       composition_coverage, suite_differences, composition_purity)
from coincide.testbed.portable import kernel_state, testbed_versions

LOW_PURITY = 0.5 # the design's threshold: composition purity at K = compositions below it is low agreement


def write_csv(df:pd.DataFrame, path:Path):
    "Write a table with six significant digits, atomically."
    with atomic_write(path, 'w') as f: df.to_csv(f, index=False, float_format='%.6g')


def comparison_table(units:pd.DataFrame) -> pd.DataFrame:
    "Every arm's relative performance over units, and the design's seven comparisons with Holm-corrected intervals."
    rel = units.pivot(index='unit', columns='method', values='relative')
    arms = pd.DataFrame({'row': rel.columns, 'relative': rel.mean().to_numpy(), 'relative_sd': rel.std(ddof=1).to_numpy(), 'units': len(rel)})
    holm = holm_intervals(comparison_diffs(units)).rename(columns={'comparison': 'row', 'mean': 'diff', 'sd': 'diff_sd'})
    return pd.concat([arms, holm], ignore_index=True)


def summary_markdown(table:pd.DataFrame, verdict:dict, purity:float, moving:pd.DataFrame, headline_moving:pd.DataFrame, command:str) -> str:
    "headroom.md: the command, the verdict by the design's rule, and the tables."
    lines = [f'# Headroom over {int(table.units.max())} draws', '', f'`{command}` (design: `bench/designs/headroom.md`, commit {DESIGN_COMMIT[:12]}).', '',
             f"**Verdict by the design's rule: {verdict['verdict']}.** Composition purity at K = compositions, mean over references: "
             f"{purity:.3f} ({'low' if purity < LOW_PURITY else 'not low'} by the design's threshold {LOW_PURITY}).", '',
             '| arm | relative (%) ± sd over units |', '|---|---|']
    lines += [f'| {r.row} | {r.relative:.1f} ± {r.relative_sd:.1f} |' for r in table[table.relative.notna()].itertuples()]
    lines += ['', '| comparison | difference (points) | Holm step | interval | confidence | resolved |', '|---|---|---|---|---|---|']
    lines += [f'| {r.row} | {r.diff:+.1f} | {int(r.step)} | [{r.low:+.1f}, {r.high:+.1f}] | {r.confidence:.4f} | {"yes" if r.resolved else "no"} |'
              for r in table[table.relative.isna()].itertuples()]
    lines += ['', 'Suites that respond to data (full minus Random 5 % beyond two standard errors over units): '
              + (', '.join(moving.index[moving.moves]) or 'none') + '.', '',
              '| arm | relative (%) on the responding suites ± sd over units |', '|---|---|']
    lines += [f'| {m} | {r["mean"]:.1f} ± {r["sd"]:.1f} |' for m, r in headline_moving.iterrows()]
    return '\n'.join(lines) + '\n'


def moving_relative(per_seed:pd.DataFrame, suites:list, chance:dict, n_items:dict) -> pd.DataFrame:
    "Every arm's relative performance on the given suites only, mean and sd over units."
    ur = unit_relative(per_seed[['unit', 'method', 'seed', *suites]], {s: chance[s] for s in suites}, {s: n_items[s] for s in suites})
    g = ur.groupby('method').relative
    return pd.DataFrame({'mean': g.mean(), 'sd': g.std(ddof=1)})


def baseline_coverage(demo) -> pd.DataFrame:
    "Composition coverage of the demo's baselines on unit 0, the default demo's draw (their scores come from its cache)."
    import numpy as np
    from coincide.testbed.demo import METHODS, scores_stage, baseline_selection, target_init_stage
    scores_stage(demo, demo.cache/demo.keys['reference']/'model', target_init_stage(demo))
    picks = {m: np.load(baseline_selection(demo, m, demo.cfg.fraction)[0]/'indices.npy') for m in METHODS if m not in ('random', 'coincide')}
    return pd.concat([composition_coverage(idx, demo.train).reset_index().assign(unit=0, arm=m) for m, idx in picks.items()], ignore_index=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--work', required=True, help='working folder: the stage cache lives in WORK/cache')
    p.add_argument('--units', type=int, nargs='+', default=list(range(UNITS)), help=f'units to run (default 0..{UNITS - 1})')
    p.add_argument('--seeds', type=int, default=3, help='stage-2 seeds per arm (the design: 3)')
    p.add_argument('--jobs', type=int, default=None, help='target trainings at once (default: one per core, up to 4)')
    p.add_argument('--selections-only', action='store_true', help='stop before the targets: agreement and coverage only')
    p.add_argument('--out', default=str(Path(__file__).parent/'results'), help='where the result files go')
    args = p.parse_args(argv)
    out, cache, t0 = Path(args.out), Path(args.work)/'cache', time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    design = sorted(args.units) == list(range(UNITS)) and args.seeds == 3
    command = 'python bench/headroom.py ' + ' '.join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    agreement, coverage, per_seed, keys, setup = [], [], [], {}, None
    for u in args.units:
        rows, demo = run_unit(u, cache, args.seeds, ARMS, args.jobs, train=not args.selections_only)
        setup, keys[u] = demo.setup, dict(demo.keys)
        agreement.append(unit_agreement(demo)); coverage.append(unit_coverage(demo))
        if u == 0 and not args.selections_only: coverage.append(baseline_coverage(demo))
        write_csv(pd.concat(agreement, ignore_index=True), out/'agreement.csv')
        write_csv(pd.concat(coverage, ignore_index=True), out/'coverage.csv')
        if rows is not None:
            per_seed.append(rows); write_csv(pd.concat(per_seed, ignore_index=True), out/'headroom_per_seed.csv')
        print(f'unit {u} done ({time.perf_counter() - t0:.0f} s)', flush=True)
    purity = composition_purity(pd.concat(agreement, ignore_index=True))
    manifest = {'command': command, 'design_commit': DESIGN_COMMIT, 'units': args.units, 'seeds': args.seeds, 'arms': list(ARMS),
                'composition_purity': purity, 'low_agreement': purity < LOW_PURITY, 'seconds': time.perf_counter() - t0,
                'kernels': kernel_state(), 'testbed_versions': testbed_versions(), 'stage_keys': keys}
    if per_seed and not design:
        print(f'units {args.units} with {args.seeds} seeds are not the design (units 0-{UNITS - 1}, 3 seeds): no comparison written; '
              'rerun the full command (cached units are read back)')
    elif per_seed:
        ps = pd.concat(per_seed, ignore_index=True)
        suites = list(setup.suites)
        n_items = {s: len(r) for s, r in setup.records.items()}
        units = unit_relative(ps, setup.chance, n_items)
        write_csv(units, out/'headroom_units.csv')
        table = comparison_table(units)
        write_csv(table, out/'headroom.csv')
        verdict = headroom_verdict(table.rename(columns={'row': 'comparison'}).dropna(subset=['step']), purity < LOW_PURITY)
        means = ps.groupby(['unit', 'method'])[suites].mean().reset_index()
        moving = moving_suites(means, suites)
        write_csv(moving.reset_index(), out/'headroom_suites.csv')
        write_csv(suite_differences(means, suites), out/'headroom_suite_diffs.csv')
        headline = moving_relative(ps, list(moving.index[moving.moves]), setup.chance, n_items) if moving.moves.any() else pd.DataFrame(columns=['mean', 'sd'])
        with atomic_write(out/'headroom.md', 'w') as f: f.write(summary_markdown(table, verdict, purity, moving, headline, command))
        manifest |= {'verdict': verdict, 'moving_suites': moving.index[moving.moves].tolist()}
        print((out/'headroom.md').read_text())
    write_manifest(out/('headroom.json' if per_seed and design else 'agreement.json'), 'headroom', manifest, {}, seed=None)
    print(f'agreement: composition purity at K = compositions, mean over {len(args.units)} references: {purity:.3f}')


if __name__ == '__main__': main()
