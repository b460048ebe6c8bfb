"""The demo end to end on a micro configuration: all ten rows, the relative column, plots, and a cached rerun."""
import time
import pandas as pd
from coincide.demo import DemoConfig, METHODS, run_demo

MICRO = DemoConfig(n_train=400, n_eval=20, n_captions=80, seeds=1)


def test_micro_demo_writes_results_and_reuses_its_cache(tmp_path):
    table = run_demo(MICRO, tmp_path)
    res = pd.read_csv(tmp_path/'results.csv')
    assert sorted(res.method) == sorted(['full', *METHODS])
    assert {'fraction', 'relative', 'relative_std', 'select_seconds'} <= set(res.columns)
    assert res.set_index('method').loc['full', 'relative'] == 100
    assert len(pd.read_csv(tmp_path/'results_per_seed.csv')) == 10
    assert all((tmp_path/f'{p}.png').stat().st_size > 0 for p in ('per_benchmark', 'relative', 'composition'))
    t = time.perf_counter()
    again = run_demo(MICRO, tmp_path)
    assert time.perf_counter() - t < 60
    pd.testing.assert_frame_equal(table, again)
