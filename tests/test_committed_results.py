"""The committed default demo is reproduced exactly: a rerun in portable mode gives `bench/results/demo_default/`'s
results byte for byte (timing aside). The rerun takes about 15 minutes (slow); the comparison itself is tested fast."""
import json, os
from pathlib import Path
import pandas as pd
import pytest
from coincide.testbed.demo import DemoConfig, results_mismatches, run_demo
from coincide.testbed.portable import exact_comparison_skip

COMMITTED = Path(__file__).resolve().parent.parent/'bench'/'results'/'demo_default'
FILES = ('results.csv', 'results_per_seed.csv', 'suites.csv')


def test_one_changed_committed_digit_is_caught(tmp_path):
    "A copy of the committed results with one digit of one cell changed is reported, and only that cell."
    res = pd.read_csv(COMMITTED/'results.csv', dtype=str, keep_default_na=False)
    text = res.at[1, 'relative']
    last = text[-1]
    res.at[1, 'relative'] = text[:-1] + ('1' if last != '1' else '2')
    res.to_csv(tmp_path/'results.csv', index=False)
    assert results_mismatches(COMMITTED/'results.csv', COMMITTED/'results.csv') == []
    found = results_mismatches(COMMITTED/'results.csv', tmp_path/'results.csv')
    assert len(found) == 1 and found[0].startswith(f"row 1 ({res.at[1, 'method']}), relative: committed {text}, now ")


@pytest.mark.slow
def test_default_demo_reproduces_the_committed_results(tmp_path):
    man = json.loads((COMMITTED/'manifest.json').read_text())
    if man['params'].get('kernels') != 'portable': pytest.fail('the committed default demo was not run with portable kernels')
    if (reason := exact_comparison_skip(man['testbed_versions'])) is not None: pytest.skip(reason)
    out = Path(os.environ.get('COINCIDE_DEMO_OUT') or tmp_path/'demo')          # a `make demo` folder reuses its cache
    run_demo(DemoConfig(), out)
    assert [m for f in FILES for m in results_mismatches(COMMITTED/f, out/f)] == []
