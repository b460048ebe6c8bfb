"""The redraw benchmarks' committed summaries are what their scripts compute from the committed per-unit CSVs."""
import json, math, shutil, subprocess, sys
from pathlib import Path
import pandas as pd
import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT/'bench'/'results'
sys.path.insert(0, str(ROOT/'bench'))
from redraw_power import between_sd, between_sd_leave_one_out, described


def run(*args):
    "Run a bench script; its stderr is shown if it fails."
    r = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r


def numbers(d, prefix=''):
    "Every number in a nested JSON object, by its dotted path."
    if isinstance(d, dict): return {k: v for key, val in d.items() for k, v in numbers(val, f'{prefix}{key}.').items()}
    if isinstance(d, list): return {k: v for i, val in enumerate(d) for k, v in numbers(val, f'{prefix}{i}.').items()}
    return {prefix[:-1]: d} if isinstance(d, (int, float)) else {}


@pytest.mark.parametrize('name', ['redraw_power', 'redraw_target'])
def test_summary_only_recomputes_the_committed_summary(tmp_path, name):
    csv = tmp_path/f'{name}.csv'
    shutil.copy(RESULTS/f'{name}.csv', csv)
    saved = json.loads((RESULTS/f'{name}.json').read_text())
    (tmp_path/f'{name}.json').write_text(json.dumps({'command': saved['command']}))   # only the run's command: the rest must be recomputed
    run(ROOT/'bench'/f'{name}.py', '--summary-only', '--out', csv)
    assert csv.read_bytes() == (RESULTS/f'{name}.csv').read_bytes()          # the units are left as they are
    fresh = json.loads((tmp_path/f'{name}.json').read_text())
    assert fresh['command'] == saved['command'] and fresh['summary_command'] == f'python bench/{name}.py --summary-only'
    f, s = numbers(fresh), numbers(saved)
    assert f.keys() == s.keys()
    assert all(math.isclose(f[k], s[k], rel_tol=1e-9, abs_tol=1e-9) for k in f), {k: (f[k], s[k]) for k in f if f[k] != s[k]}


@pytest.mark.parametrize('args, says', [
    ([], '--cache'),                                                   # units need the cache
    (['--power', RESULTS/'power'], '--cache'),                         # a powered-run folder is not a cache
    (['--summary-only'], 'does not exist'),                            # no units to summarise
])
def test_refused_with_what_to_do(tmp_path, args, says):
    r = subprocess.run([sys.executable, str(ROOT/'bench'/'redraw_power.py'), '--out', str(tmp_path/'x.csv'), *map(str, args)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and says in r.stderr, r.stderr


def test_summary_only_needs_the_run_command(tmp_path):
    shutil.copy(RESULTS/'redraw_target.csv', tmp_path/'t.csv')
    r = subprocess.run([sys.executable, str(ROOT/'bench'/'redraw_target.py'), '--summary-only', '--out', str(tmp_path/'t.csv')],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "holds no 'command'" in r.stderr, r.stderr


def test_described_and_between_sd_on_known_values():
    v = pd.Series([1.0, 2.0, 3.0, 4.0, 10.0])
    d = described(v)
    assert math.isclose(d['mean'], 4.0) and math.isclose(d['sd'], math.sqrt(12.5))
    half = stats.t.ppf(0.975, 4) * math.sqrt(12.5 / 5)
    assert math.isclose(d['ci_low'], 4.0 - half) and math.isclose(d['ci_high'], 4.0 + half)
    assert d['sd_ci_low'] < d['sd'] < d['sd_ci_high']
    assert math.isclose(stats.chi2.cdf(4 * 12.5 / d['sd_ci_high'] ** 2, 4), 0.025)   # the sd's interval: chi-square quantiles, 4 df
    assert math.isclose(between_sd(v, 3.0), math.sqrt(12.5 - 9.0)) and between_sd(v, 10.0) == 0.0
    loo = between_sd_leave_one_out(v, 0.0)
    assert loo['min_without_unit'] == 4 and math.isclose(loo['min'], pd.Series([1.0, 2, 3, 4]).std())   # the outlier left out
    assert loo['max_without_unit'] == 3 and math.isclose(loo['max'], max(v.drop(i).std() for i in v.index))
