"""The numbers `nbs/16_testbed_report.ipynb` cites are what the committed result files give.

Each number is recomputed here from `bench/results/` (per-seed rows, not the summaries that quote them) with the
functions the demo and the headroom study use, and compared with the report's stored output and with its text."""
import json, math, shutil
from pathlib import Path
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT/'bench'/'results'
REPORT = ROOT/'nbs'/'16_testbed_report.ipynb'
from coincide.testbed.demo import mean_interval, paired_difference, pooled_relative, relative_per_seed
from coincide.testbed.headroom import comparison_diffs, composition_purity, holm_intervals


def cited_from(results:Path) -> dict:
    "Every number the report cites, recomputed from the per-seed and per-unit files under `results`."
    power_rows = pd.read_csv(results/'power'/'results_per_seed.csv')
    psuites = pd.read_csv(results/'power'/'suites.csv')
    rel = power_rows.assign(relative=relative_per_seed(power_rows, psuites.suite[psuites.scored].tolist())).pivot(index='seed', columns='method', values='relative')
    units = pd.read_csv(results/'headroom_units.csv')
    holm = holm_intervals(comparison_diffs(units)).set_index('comparison')
    purity = composition_purity(pd.read_csv(results/'agreement.csv'))
    cal = pd.read_csv(results/'calibration.csv')
    a10, a14 = pooled_relative(cal[cal.attempt == 10]), pooled_relative(cal[cal.attempt == 14])
    drows = pd.read_csv(results/'demo_default'/'results_per_seed.csv')
    dsuites = pd.read_csv(results/'demo_default'/'suites.csv')
    drel = drows.assign(relative=relative_per_seed(drows, dsuites.suite[dsuites.scored].tolist())).pivot(index='seed', columns='method', values='relative')
    return {
        'power_coincide_vs_random': list(paired_difference(rel.coincide, rel.random)), 'power_random_relative': float(rel.random.mean()),
        'power_paired_sd': float((rel.coincide - rel.random).std(ddof=1)),
        'headroom_random_relative': float(units[units.method == 'random'].relative.mean()),
        'headroom_coincide_vs_random': holm.loc['coincide - random', ['mean', 'low', 'high']].tolist(),
        'headroom_coverage_vs_random': holm.loc['oracle-coverage - random', ['mean', 'low', 'high']].tolist(),
        'composition_purity': float(purity),
        'calibration_accepted_5': float(a10['random-0.05'].mean()), 'calibration_accepted_20': float(a10['random-0.2'].mean()),
        'calibration_measured_5': list(mean_interval(a14['random-0.05'])), 'calibration_measured_20': list(mean_interval(a14['random-0.2'])),
        'calibration_measured_gap': list(paired_difference(a14['random-0.2'], a14['random-0.05'])),
        'default_random_relative': float(drel.random.mean()),
        'default_coincide_vs_random': list(paired_difference(drel.coincide, drel.random)),
    }


def stored_cited() -> dict:
    "The report's stored output of its cell that prints the cited numbers."
    cells = json.loads(REPORT.read_text())['cells']
    cell = next(c for c in cells if c['cell_type'] == 'code' and 'print(json.dumps(cited))' in ''.join(c['source']))
    return json.loads(''.join(''.join(o['text']) for o in cell['outputs'] if o.get('name') == 'stdout'))


def report_text() -> str:
    "The report's prose: its markdown cells."
    return '\n'.join(''.join(c['source']) for c in json.loads(REPORT.read_text())['cells'] if c['cell_type'] == 'markdown')


def close(a, b, tol=1e-3) -> bool:
    "Numbers, or lists of them, equal within `tol` (the report stores four decimals)."
    return all(math.isclose(x, y, abs_tol=tol) for x, y in zip(a, b)) if isinstance(a, list) else math.isclose(a, b, abs_tol=tol)


def ci(v:list) -> str: return f'{v[0]:+.1f} [{v[1]:+.1f}, {v[2]:+.1f}]'


@pytest.fixture(scope='module')
def fresh(): return cited_from(RESULTS)


def test_stored_output_is_what_the_csvs_give(fresh):
    stored = stored_cited()
    assert stored.keys() == fresh.keys()
    assert all(close(stored[k], fresh[k]) for k in fresh), {k: (stored[k], fresh[k]) for k in fresh if not close(stored[k], fresh[k])}


def test_committed_tables_agree_with_their_per_seed_rows(fresh):
    power = pd.read_csv(RESULTS/'power.csv').set_index('method')
    assert close(power.loc['coincide', ['diff_vs_random', 'diff_ci_low', 'diff_ci_high']].tolist(), fresh['power_coincide_vs_random'], 1e-4)
    default = pd.read_csv(RESULTS/'demo_default'/'results.csv').set_index('method')
    assert close(default.loc['coincide', ['diff_vs_random', 'diff_ci_low', 'diff_ci_high']].tolist(), fresh['default_coincide_vs_random'], 1e-4)
    headroom = pd.read_csv(RESULTS/'headroom.csv').set_index('row')
    assert close(headroom.loc['coincide - random', ['diff', 'low', 'high']].tolist(), fresh['headroom_coincide_vs_random'], 1e-4)


def test_the_text_quotes_the_csvs(fresh):
    f = fresh
    quotes = [ci(f['power_coincide_vs_random']), f"paired seed sd {f['power_paired_sd']:.2f}",
              ci(f['headroom_coincide_vs_random']), ci(f['headroom_coverage_vs_random']), f"purity {f['composition_purity']:.2f}",
              f"Random 20 % at {f['headroom_random_relative']:.1f}",
              f"Random 20 % was in the window ({f['calibration_accepted_20']:.1f})", f"({f['calibration_accepted_5']:.1f})",
              'Random 5 % is {:.1f} [{:.1f}, {:.1f}]'.format(*f['calibration_measured_5']),
              'Random 20 % is {:.1f} [{:.1f}, {:.1f}]'.format(*f['calibration_measured_20']), ci(f['calibration_measured_gap']),
              f"Random 20 % is at {f['default_random_relative']:.1f} % of full data", ci(f['default_coincide_vs_random'])]
    text = report_text()
    assert [q for q in quotes if q not in text] == []


def test_a_changed_result_file_is_caught(tmp_path, fresh):
    "One COINCIDE accuracy of one powered seed changed by two points, and of one headroom unit: the stored numbers no longer match."
    shutil.copytree(RESULTS, tmp_path/'results')
    f = tmp_path/'results'/'power'/'results_per_seed.csv'
    rows = pd.read_csv(f)
    i = rows.index[(rows.method == 'coincide') & (rows.seed == 0)][0]
    rows.loc[i, 'photo_recog'] -= 0.02
    rows.to_csv(f, index=False)
    u = tmp_path/'results'/'headroom_units.csv'
    units = pd.read_csv(u)
    units.loc[units.index[(units.method == 'coincide') & (units.unit == 0)][0], 'relative'] += 2
    units.to_csv(u, index=False)
    changed = cited_from(tmp_path/'results')
    stored = stored_cited()
    assert not close(changed['power_coincide_vs_random'], stored['power_coincide_vs_random'])
    assert not close(changed['power_paired_sd'], stored['power_paired_sd'])
    assert not close(changed['headroom_coincide_vs_random'], stored['headroom_coincide_vs_random'])
