"""The redraw benchmarks' committed summaries are what their scripts compute from the committed per-unit CSVs."""
import json, math, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT/'bench'/'results'


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
    subprocess.run([sys.executable, str(ROOT/'bench'/f'{name}.py'), '--summary-only', '--out', str(csv)], check=True, capture_output=True)
    assert csv.read_bytes() == (RESULTS/f'{name}.csv').read_bytes()          # the units are left as they are
    fresh = json.loads((tmp_path/f'{name}.json').read_text())
    assert fresh['command'] == saved['command'] and fresh['summary_command'] == f'python bench/{name}.py --summary-only'
    f, s = numbers(fresh), numbers(saved)
    assert f.keys() == s.keys()
    assert all(math.isclose(f[k], s[k], rel_tol=1e-9, abs_tol=1e-9) for k in f), {k: (f[k], s[k]) for k in f if f[k] != s[k]}


def test_running_units_needs_the_cache(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT/'bench'/'redraw_power.py'), '--out', str(tmp_path/'x.csv')], capture_output=True, text=True)
    assert r.returncode == 2 and '--cache' in r.stderr and '--summary-only' in r.stderr
