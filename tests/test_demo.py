"""The demo end to end on a micro configuration: all ten rows, the statistics columns, plots, a cached
rerun, and every selection it wrote re-derived by `coincide verify --rederive`."""
import json, shutil, time
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from coincide.core import save_npy, sha256_file
from coincide.testbed.demo import DemoConfig, METHODS, run_demo

MICRO = DemoConfig(n_train=400, n_eval=20, n_captions=80, n_pretrain=400, seeds=2)


@pytest.fixture(scope='module')
def micro(tmp_path_factory):
    out = tmp_path_factory.mktemp('demo')
    return out, run_demo(MICRO, out, jobs=2)


def test_micro_demo_writes_results_and_reuses_its_cache(micro):
    out, table = micro
    res = pd.read_csv(out/'results.csv')
    assert sorted(res.method) == sorted(['full', *METHODS])
    assert {'fraction', 'relative', 'relative_sd', 'diff_vs_random', 'diff_ci_low', 'diff_ci_high', 'seeds',
            'select_seconds'} <= set(res.columns)
    assert (res.seeds == 2).all()
    per_seed = pd.read_csv(out/'results_per_seed.csv')
    assert len(per_seed) == 20
    suites = pd.read_csv(out/'suites.csv', index_col='suite')
    assert set(suites.index) == set(per_seed.columns) - {'method', 'seed', 'fraction', 'select_seconds'}
    r = res.set_index('method')
    if suites.scored.any(): assert r.loc['full', 'relative'] == pytest.approx(100)
    assert np.isnan(r.loc['random', 'diff_vs_random'])
    other = r.drop(['random', 'full'])
    if suites.scored.any(): assert ((other.diff_ci_low <= other.diff_vs_random) & (other.diff_vs_random <= other.diff_ci_high)).all()
    else: assert other.relative.isna().all() and 'No suite where' in (out/'results.md').read_text()
    assert all((out/f'{p}.png').stat().st_size > 0 for p in ('per_benchmark', 'relative', 'composition', 'coincide_clusters'))
    diag, summary = pd.read_csv(out/'coincide_clusters.csv'), json.loads((out/'coincide_diagnostics.json').read_text())
    assert len(diag) == summary['clusters'] == MICRO.k and diag.P.sum() == pytest.approx(1, abs=1e-4)
    assert 1 <= summary['effective_clusters'] <= MICRO.k and diag.taken.sum() == round(MICRO.fraction * MICRO.n_train)
    t = time.perf_counter()
    again = run_demo(MICRO, out)
    assert time.perf_counter() - t < 60
    pd.testing.assert_frame_equal(table, again)


def test_random_draws_afresh_for_each_seed_and_the_others_select_once(micro):
    out, _ = micro
    sels = {p.name: p for p in (out/'cache').glob('select-*')}
    def params(p): return json.loads((p/'done.json').read_text())['params']
    random = [np.load(p/'indices.npy') for n, p in sels.items() if n.startswith('select-random-')]
    assert len(random) == 2 and not np.array_equal(*random)
    assert len([n for n in sels if n.startswith('select-semdedup-')]) == 1
    assert {params(p)['seed'] for n, p in sels.items() if n.startswith('select-random-')} == {0, 1}


def test_verify_rederives_every_selection_of_the_demo(micro, cli):
    out, _ = micro
    folders = sorted(p for p in (out/'cache').glob('select-*') if (p/'indices.npy').is_file())
    assert {f.name.rsplit('-', 1)[0] for f in folders} == {f'select-{m}' for m in METHODS}
    for f in folders:
        res = cli('verify', f, '--rederive')
        assert res.returncode == 0, f"{f.name}: {res.stdout}{res.stderr}"
        assert 're-derived: identical indices' in res.stdout


@pytest.mark.parametrize('method', ['coincide', 'semdedup'])
def test_verify_rederive_catches_a_tampered_selection(micro, cli, tmp_path, method):
    out, _ = micro
    src = next((out/'cache').glob(f'select-{method}-*'))
    idx = np.load(src/'indices.npy')
    swapped = np.sort(np.r_[idx[1:], np.setdiff1d(np.arange(MICRO.n_train), idx)[0]])
    save_npy(src/'indices.npy', swapped)
    original = (src/"manifest.json").read_text(); man = json.loads(original)
    try:
        plain = cli('verify', src, '--rederive')
        assert plain.returncode == 1 and 'has changed' in plain.stdout and 'Traceback' not in plain.stderr
        man['outputs']['indices']['sha256'] = sha256_file(src/'indices.npy')          # a tamper that also fixes the hash
        (src/'manifest.json').write_text(json.dumps(man))
        res = cli('verify', src, '--rederive')
        assert res.returncode == 1, res.stdout
        assert 're-derived selection differs from indices.npy (2 indices differ)' in res.stdout
        assert 'Traceback' not in res.stderr
    finally:
        save_npy(src/"indices.npy", idx); (src/"manifest.json").write_text(original)


def test_targets_trained_in_worker_processes_equal_those_trained_in_process(micro, tmp_path):
    out, _ = micro
    shutil.copytree(out/'cache', tmp_path/'cache', symlinks=True)
    redo = [p for p in (tmp_path/'cache').glob('target-*') if p.name.startswith(('target-full-0-', 'target-random-1-', 'target-pretrained-'))]
    assert len(redo) == 3                                               # the pretrained target was built by the aside worker
    pretrained = next(p for p in redo if p.name.startswith('target-pretrained-'))
    weights = (pretrained/'model'/'model.safetensors').read_bytes()
    for p in redo: shutil.rmtree(p)
    run_demo(MICRO, tmp_path, jobs=1)
    assert all(p.is_dir() for p in redo)
    assert (pretrained/'model'/'model.safetensors').read_bytes() == weights
    pd.testing.assert_frame_equal(pd.read_csv(out/'results_per_seed.csv').drop(columns='select_seconds'),
                                  pd.read_csv(tmp_path/'results_per_seed.csv').drop(columns='select_seconds'))


def test_another_reference_seed_is_another_stage(monkeypatch, tmp_path):
    "The reference stage's parameters carry its seed, so seed 1 is another stage (another cache key) than seed 0."
    import coincide.testbed.demo as d
    seen = {}
    def record(demo, name, params, fn):                                   # the stage's parameters, no training
        seen[demo.cfg.reference_seed] = params
        return tmp_path, None
    monkeypatch.setattr(d, 'run_stage', record)
    for seed in (0, 1):
        demo = d.Demo(DemoConfig(reference_seed=seed), tmp_path)
        demo.keys['benchmark'] = 'benchmark-x'
        d.reference_stage(demo)
    assert seen[0]['seed'] == 0 and seen[1]['seed'] == 1
    assert d.stage_key('reference', seen[0]) != d.stage_key('reference', seen[1])


def test_demo_command_passes_seeds_and_kernels_and_rejects_negative_seeds(monkeypatch, tmp_path):
    "`--reference-seed`, `--target-seed` and `--native-kernels` reach the demo; unset, the preset's seeds and portable kernels stay; a negative seed is refused."
    import argparse
    import coincide.testbed.demo as d
    from coincide.core import CoincideError
    seen = []
    def record(cfg, out, device=None, jobs=None, portable=True):            # the config run_demo would get, no training
        seen.append((cfg, portable)); (tmp_path/'results.md').write_text('| table |')
    monkeypatch.setattr(d, 'run_demo', record)
    p = argparse.ArgumentParser(); d.demo_args(p)
    d.demo_main(p.parse_args(['--quick', '--out', str(tmp_path), '--reference-seed', '3', '--target-seed', '5']))
    d.demo_main(p.parse_args(['--quick', '--out', str(tmp_path), '--native-kernels']))
    (first, portable), (second, native) = seen
    assert (first.reference_seed, first.target_seed, first.n_train, portable) == (3, 5, d.QUICK.n_train, True)
    assert (second.reference_seed, second.target_seed, native) == (d.QUICK.reference_seed, d.QUICK.target_seed, False)
    with pytest.raises(CoincideError, match='--reference-seed must be 0 or more'):
        d.demo_main(p.parse_args(['--out', str(tmp_path), '--reference-seed', '-1']))


def test_every_process_of_the_micro_demo_records_portable_kernels(micro):
    "The parent and each target worker computed with ATen at AVX2, MKL_CBWR=AVX2 and oneDNN off, and the manifest says so."
    from coincide.testbed.portable import cpu_has_avx2
    if not cpu_has_avx2(): pytest.skip('this CPU has no AVX2: the demo runs natively')
    out, _ = micro
    man = json.loads((out/'manifest.json').read_text())
    assert man['params']['kernels'] == 'portable' and man['testbed_versions']['torch']
    parent, stages = man['kernels']['parent'], man['kernels']['stages']
    for name, state in {'parent': parent, **stages}.items():
        assert (state['mode'], state['aten_capability'], state['onednn'], state['mkl_cbwr']) == ('portable', 'AVX2', False, 'AVX2'), name
    workers = {s['pid'] for name, s in stages.items() if name.startswith('target-') and name != 'target-pretrained'} - {parent['pid']}
    assert len(workers) == 2


def test_headroom_arms_share_the_demo_draw_and_keep_their_defining_property(micro):
    "Each arm of the headroom design on the micro demo's reference: Random is the demo's draw, and each oracle does what it says."
    from coincide.testbed.headroom import (ARMS, DESIGN_COMMIT, run_unit, arm_selection, record_labels, group_ids, flagged,
                                           eval_composition_weights, unit_agreement, allocate_groups)
    out, _ = micro
    _, demo = run_unit(0, out/'cache', seeds=2, train=False, base=MICRO)
    picks = {a: arm_selection(demo, a, 0) for a in ARMS}
    demo_random = next(p for p in (out/'cache').glob('select-random-*') if json.loads((p/'done.json').read_text())['params']['seed'] == 0)
    assert np.array_equal(picks['random'], np.load(demo_random/'indices.npy'))            # the demo's own draw
    assert np.array_equal(picks['coincide'], np.load(out/'cache'/demo.keys['select-coincide']/'indices.npy'))
    n, k = MICRO.n_train, round(MICRO.fraction * MICRO.n_train)
    assert {a: len(p) for a, p in picks.items()} == {a: n // 20 if a == 'random-5' else k for a in ARMS}
    groups, names = group_ids(record_labels(demo.train, 'composition'))
    sizes, cov = np.bincount(groups, minlength=len(names)), np.bincount(groups[picks['oracle-coverage']], minlength=len(names))
    level = cov[cov < sizes].min()
    assert (cov[cov < sizes] - level <= 1).all() and (cov[cov >= sizes] <= level + 1).all()    # even, capped at the sizes
    w = np.array([eval_composition_weights(demo.setup.records, list(names))[0][c] for c in names])
    got = np.bincount(groups[picks['oracle-eval']], minlength=len(names))
    assert got[w == 0].sum() == 0 and np.array_equal(got, allocate_groups(sizes, k, w))             # the evaluation's weights, capped
    sel = {name: json.loads((out/'cache'/demo.keys[f'select-{name}']/'manifest.json').read_text()) for name in ('coincide-true', 'coincide-k')}
    assert np.array_equal(np.load(sel['coincide-true']['inputs']['assignments']['path']), groups)     # the true compositions as clusters
    assert len(np.load(sel['coincide-k']['inputs']['centroids']['path'])) == len(names)               # K = the number of compositions
    assert not flagged(demo.train, json.loads((demo.bench/'truth.json').read_text()))[picks['oracle-clean']].any()
    manifests = [json.loads((p/'manifest.json').read_text()) for p in (out/'cache').glob('arm-*')]
    manifests += [json.loads((p/'manifest.json').read_text()) for p in (out/'cache').glob('select-coincide-[kt]*')]
    assert len(manifests) == 2 * 3 + 2 + 2 and all(m['params']['design_commit'] == DESIGN_COMMIT for m in manifests)
    agree = unit_agreement(demo)
    assert set(agree.k) == {MICRO.k, len(names)} and agree.purity.between(0, 1).all()


# ---- bad inputs of `coincide demo --preset power` -------------------------------------------------

DEFAULT_RESULTS = Path(__file__).parent.parent/'bench'/'results'/'demo_default'/'results.csv'


def test_power_config_refuses_a_one_seed_run_instead_of_planning_the_cap():
    "A `--quick` run (1 seed) has no spread: t(0.975, 0) is NaN, which must not become power_seeds' cap of 200 seeds."
    from coincide.core import CoincideError
    from coincide.testbed.demo import power_config, power_seeds, read_results
    assert 3 <= power_config(read_results(DEFAULT_RESULTS)).seeds < 200
    quick = pd.read_csv(DEFAULT_RESULTS).assign(seeds=1)
    with pytest.raises(CoincideError, match=r'quick.csv: a run of 1 seed\(s\) has no spread.*not `--quick`'):
        power_config(quick, source='quick.csv')
    with pytest.raises(CoincideError, match='got nan'): power_seeds(float('nan'))


@pytest.mark.parametrize('text,message', [
    ('a,b\n1,2\n', "lacks the column(s) 'method'"),
    ('', 'not a CSV table (EmptyDataError'),
    ('\n'.join(l for l in DEFAULT_RESULTS.read_text().splitlines() if not l.startswith('coincide,')), "no 'coincide' row"),
    (pd.read_csv(DEFAULT_RESULTS).assign(seeds=1).to_csv(index=False), 'run the default `coincide demo` (3 seeds), not `--quick`'),
])
def test_power_preset_names_a_bad_results_file(cli_in_process, tmp_path, text, message):
    (tmp_path/'results.csv').write_text(text)
    res = cli_in_process('demo', '--preset', 'power', '--from', tmp_path/'results.csv', '--out', tmp_path/'p')
    assert res.returncode == 2 and 'Traceback' not in res.stderr, res.stderr
    assert f"{tmp_path/'results.csv'}: " in res.stderr and message in res.stderr, res.stderr
    assert not (tmp_path/'p').exists()
