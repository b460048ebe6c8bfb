"""`coincide select` and `coincide.selection` against a naive implementation of the paper's equations, end to end."""
import json
import numpy as np
import pytest
from coincide.core import budget_size
from coincide.selection import greedy_mmd, select_coincide, select_sweep
from coincide.testbed.synthetic import synthetic_run
from naive_coincide import load_run, naive_greedy, naive_kernel, naive_select


def unit(x): return x / np.linalg.norm(x, axis=1, keepdims=True)


CASES = [dict(seed=0), dict(seed=1, n=400, k=20, d=24, zipf=1.3), dict(seed=2, n=250, k=8, d=12, empty=3),
         dict(seed=3, n=300, k=15, dup=40, dtype=np.float32), dict(seed=4, n=500, k=30, d=16, zipf=0.5, common=2.0)]


@pytest.mark.parametrize('case', range(len(CASES)))
@pytest.mark.parametrize('fraction,tau', [(0.2, 0.1), (0.35, 0.5)])
def test_paper_mode_equals_naive(tmp_path, case, fraction, tau):
    run = synthetic_run(tmp_path/'run', **CASES[case])
    emb, layout, cen, a = load_run(run)
    want, shortfall, gap = naive_select(emb, layout, cen, a, fraction, tau)
    assert gap > 1e-10, f'a near-tie ({gap:.1e}) in the naive greedy: choose another data set'
    idx, table = select_coincide(run, fraction, tau=tau, mode='paper', progress=False)
    np.testing.assert_array_equal(idx, want)
    assert table.attrs['shortfall'] == shortfall
    exact, _ = select_coincide(run, fraction, tau=tau, progress=False)
    assert len(exact) == budget_size(len(emb), fraction) and set(want) <= set(exact)


def test_greedy_equals_from_scratch_on_realistic_clusters():
    rng = np.random.default_rng(11)
    for n, d, m, spread in [(150, 32, 60, 0.5), (200, 64, 100, 1.0), (120, 16, 119, 0.3)]:
        x = unit(rng.normal(size=d) + spread * rng.normal(size=(n, d))).astype(np.float16)
        want, gap = naive_greedy(naive_kernel(x, 1.0), m)
        assert gap > 1e-10
        np.testing.assert_array_equal(greedy_mmd(x, m), want)
        np.testing.assert_array_equal(greedy_mmd(x, m, batch=1, cache_bytes=8 * n), want)     # one row per step, no cache


def test_greedy_ties_take_lowest_position():
    rng = np.random.default_rng(5)
    base = unit(rng.normal(size=(6, 8)))
    x = base[[0, 1, 2, 0, 3, 1, 4, 5, 0, 2]]                 # rows 0/3/8, 1/5, 2/9 are equal
    want, _ = naive_greedy(naive_kernel(x, 1.0), 10)
    got = greedy_mmd(x, 10)
    np.testing.assert_array_equal(got, want)
    first = {int(p): t for t, p in enumerate(got)}
    assert first[0] < first[3] < first[8] and first[1] < first[5] and first[2] < first[9]


def test_underfill_reproduced_and_reported(tmp_path, cli):
    # 900 samples in 40 clusters with Zipf-skewed sizes: the small dense clusters visited last
    # cannot absorb their re-normalised shares.
    run = synthetic_run(tmp_path/'run', n=900, k=40, d=64, seed=8, zipf=2.4, lloyd=0, common=0.0)
    sizes = np.bincount(np.load(run/'assignments.npy'))
    res = cli('select', run, '--fraction', '0.2', '--mode', 'paper', '--out', tmp_path/'paper')
    assert res.returncode == 0, res.stderr
    paper = np.load(tmp_path/'paper'/'indices.npy')
    assert len(paper) < 150, len(paper)                       # far fewer than 180
    man = json.loads((tmp_path/'paper'/'manifest.json').read_text())
    assert man['counts']['shortfall'] == 180 - len(paper) and man['counts']['budget'] == 180
    assert f'shortfall {180 - len(paper)}' in res.stdout
    res = cli('select', run, '--fraction', '0.2', '--out', tmp_path/'exact')
    assert res.returncode == 0, res.stderr
    exact = np.load(tmp_path/'exact'/'indices.npy')
    assert len(exact) == 180 and set(paper) <= set(exact)
    assert sizes.max() > 150                                  # a big cluster that could have taken the leftover


def test_cli_outputs_default_folder_and_subset(tmp_path, cli):
    run = synthetic_run(tmp_path/'run', n=200, k=10)
    recs = [{'id': i, 'image': f'coco/{i}.jpg', 'conversations': [{'from': 'human', 'value': '<image>\nq'}, {'from': 'gpt', 'value': 'a'}]}
            for i in range(200)]
    (tmp_path/'train.json').write_text(json.dumps(recs))
    res = cli('select', run, '--fraction', '0.25', '--data', tmp_path/'train.json')
    assert res.returncode == 0, res.stderr
    out = run/'select-exact-0.25'
    idx = np.load(out/'indices.npy')
    assert idx.dtype == np.int64 and len(idx) == 50 and (np.diff(idx) > 0).all()
    assert [r['id'] for r in json.loads((out/'subset.json').read_text())] == idx.tolist()
    rows = (out/'clusters.csv').read_text().splitlines()
    assert rows[0] == 'cluster,size,S,D,P,allocated,taken'
    assert sum(int(r.split(',')[-1]) for r in rows[1:]) == 50
    man = json.loads((out/'manifest.json').read_text())
    assert man['stage'] == 'select' and man['params']['mode'] == 'exact' and man['params']['tau'] == 0.1
    assert set(man['inputs']) >= {'embeddings', 'layout', 'centroids', 'assignments', 'data'}


def test_same_inputs_same_bytes(tmp_path, cli):
    run = synthetic_run(tmp_path/'run', n=300, k=12, dup=20)
    for out in ('a', 'b'): assert cli('select', run, '--fraction', '0.3', '--out', tmp_path/out).returncode == 0
    for f in ('indices.npy', 'clusters.csv'):
        assert (tmp_path/'a'/f).read_bytes() == (tmp_path/'b'/f).read_bytes()


def test_sweep_equals_single_runs(tmp_path, cli):
    run = synthetic_run(tmp_path/'run', n=300, k=12, seed=3)
    res = cli('select', run, '--fractions', '0.1', '0.3', '0.5', '--mode', 'paper')
    assert res.returncode == 0, res.stderr
    for fr in (0.1, 0.3, 0.5):
        got = np.load(run/'select-paper-sweep'/f'fraction-{fr:g}'/'indices.npy')
        np.testing.assert_array_equal(got, select_coincide(run, fr, mode='paper', progress=False)[0])
    sweep = select_sweep(run, [0.1, 0.3], progress=False)
    assert [len(sweep[f][0]) for f in (0.1, 0.3)] == [30, 90]


def test_options_for_ablations(tmp_path):
    run = synthetic_run(tmp_path/'run', n=300, k=12)
    base = select_coincide(run, 0.2, progress=False)
    for kw in [dict(transfer='off'), dict(density_mode='off'), dict(transfer='knn', knn=3), dict(transfer_columns='all')]:
        idx, table = select_coincide(run, 0.2, progress=False, **kw)
        assert len(idx) == 60
        if kw.get('transfer') == 'off': assert (table['S'] == 1).all()
        if kw.get('density_mode') == 'off': assert (table['D'] == 1).all()
    assert not np.array_equal(select_coincide(run, 0.2, progress=False, transfer='off')[1]['P'], base[1]['P'])


def test_empty_clusters_are_dropped(tmp_path):
    run = synthetic_run(tmp_path/'run', n=200, k=8, empty=4)
    idx, table = select_coincide(run, 0.3, progress=False)
    assert table.attrs['empty_clusters'] >= 4 and (table['size'] > 0).all() and len(idx) == 60


def _break(run, what):
    x = np.load(run/'embeddings.npy')
    if what == 'fraction': return ['--fraction', '1.5'], 'must be in (0, 1]'
    if what == 'zero fraction': return ['--fraction', '0'], 'must be in (0, 1]'
    if what == 'tau': return ['--fraction', '0.2', '--tau', '0'], '--tau must be > 0'
    if what == 'sigma': return ['--fraction', '0.2', '--sigma', '-1'], '--sigma must be > 0'
    if what == 'nan':
        x = x.copy(); x[17, 3] = np.nan; np.save(run/'embeddings.npy', x); return ['--fraction', '0.2'], 'record 17 has a NaN'
    if what == 'rows':
        np.save(run/'assignments.npy', np.load(run/'assignments.npy')[:-3]); return ['--fraction', '0.2'], '97 assignments for 100 embedding rows'
    if what == 'width':
        np.save(run/'centroids.npy', np.load(run/'centroids.npy')[:, :-2]); return ['--fraction', '0.2'], 'centroids have 14 columns but the embeddings have 16'
    if what == 'layout outside':
        lay = json.loads((run/'layout.json').read_text()); lay['blocks'][-1]['stop'] = 20
        (run/'layout.json').write_text(json.dumps(lay)); return ['--fraction', '0.2'], 'outside the 16 columns'
    if what == 'layout gap':
        lay = json.loads((run/'layout.json').read_text()); del lay['blocks'][1]
        (run/'layout.json').write_text(json.dumps(lay)); return ['--fraction', '0.2'], 'leave a gap at column 4'
    if what == 'truncated':
        raw = (run/'embeddings.npy').read_bytes(); (run/'embeddings.npy').write_bytes(raw[:len(raw) // 2]); return ['--fraction', '0.2'], 'truncated'
    if what == 'assignment range':
        a = np.load(run/'assignments.npy'); a[5] = 99; np.save(run/'assignments.npy', a); return ['--fraction', '0.2'], 'record 5 has cluster id 99'
    if what == 'missing':
        (run/'centroids.npy').unlink(); return ['--fraction', '0.2'], 'run `coincide cluster` first'
    if what == 'both':
        return ['--fraction', '0.2', '--fractions', '0.1'], 'either --fraction'
    raise ValueError(what)


BAD = ['fraction', 'zero fraction', 'tau', 'sigma', 'nan', 'rows', 'width', 'layout outside', 'layout gap', 'truncated',
       'assignment range', 'missing', 'both']


@pytest.mark.parametrize('what', BAD)
def test_bad_input_is_named(tmp_path, cli, what):
    run = synthetic_run(tmp_path/'run', n=100, k=5)
    args, message = _break(run, what)
    res = cli('select', run, *args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert message in res.stderr, res.stderr
    assert 'Traceback' not in res.stderr


def test_records_must_match_run(tmp_path, cli):
    run = synthetic_run(tmp_path/'run', n=100, k=5)
    (tmp_path/'train.json').write_text(json.dumps([{'id': 1, 'conversations': [{'from': 'human', 'value': 'q'}]}]))
    res = cli('select', run, '--fraction', '0.2', '--data', tmp_path/'train.json')
    assert res.returncode == 2 and '1 records but the run has 100' in res.stderr


@pytest.mark.parametrize('tau', [0.02, 0.1, 1.0])
def test_early_picks_change_nothing(tmp_path, tau):
    # a small tau concentrates the budget, so some clusters need more picks than the density pass made
    run = synthetic_run(tmp_path/'run', n=400, k=10, seed=9, zipf=0.8)
    for mode in ('paper', 'exact'):
        a, ta = select_coincide(run, 0.3, tau=tau, mode=mode, progress=False)
        b, tb = select_coincide(run, 0.3, tau=tau, mode=mode, progress=False, early_picks=False)
        np.testing.assert_array_equal(a, b)
    from coincide.selection import early_guess
    g = early_guess(ta['size'].to_numpy(), 120)
    if tau == 0.02: assert ((ta['taken'] > g) & (ta['taken'] < ta['size'])).any()   # the second pass was exercised
