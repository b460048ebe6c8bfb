"""`coincide verify` on real outputs of `coincide cluster` and `coincide select`."""
import json
import numpy as np
import pytest


@pytest.fixture
def run(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 16))
    x = centres[rng.integers(0, 6, 240)] + 0.3 * rng.normal(size=(240, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    run = tmp_path/'run'; run.mkdir()
    np.save(run/'embeddings.npy', x.astype(np.float16))
    (run/'layout.json').write_text(json.dumps({'blocks': [{'layer': 0, 'modality': 'vision', 'start': 0, 'stop': 8},
                                                          {'layer': 0, 'modality': 'text', 'start': 8, 'stop': 16}]}))
    return run


def test_verify_select_and_tamper(cli, run):
    res = cli('cluster', run, '--k', 6, '--niter', 10)
    assert res.returncode == 0, res.stderr
    res = cli('select', run, '--fraction', 0.2, '--out', run/'sel')
    assert res.returncode == 0, res.stderr
    ok = cli('verify', run/'sel', '--rederive')
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert 'ok' in ok.stdout
    assert cli('verify', run).returncode == 0
    idx = np.load(run/'sel'/'indices.npy')
    np.save(run/'sel'/'indices.npy', idx[:-1])
    bad = cli('verify', run/'sel')
    assert bad.returncode == 1
    assert "output 'indices'" in bad.stdout and 'the manifest says' in bad.stdout


def test_verify_changed_input(cli, run):
    assert cli('cluster', run, '--k', 6, '--niter', 10).returncode == 0
    assert cli('select', run, '--fraction', 0.2, '--out', run/'sel').returncode == 0
    np.save(run/'assignments.npy', np.zeros(240, dtype=np.int64))
    bad = cli('verify', run/'sel')
    assert bad.returncode == 1
    assert "input 'assignments'" in bad.stdout and 'has changed' in bad.stdout


def test_verify_nothing_there(cli, tmp_path):
    res = cli('verify', tmp_path)
    assert res.returncode == 2
    assert 'no manifest.json' in res.stderr and 'Traceback' not in res.stderr


@pytest.fixture
def run100(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 16))[rng.integers(0, 5, 100)] + 0.4 * rng.normal(size=(100, 16))
    run = tmp_path/'run100'; run.mkdir()
    np.save(run/'embeddings.npy', (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16))
    (run/'layout.json').write_text(json.dumps({'blocks': [{'layer': 0, 'modality': 'vision', 'start': 0, 'stop': 8},
                                                          {'layer': 0, 'modality': 'text', 'start': 8, 'stop': 16}]}))
    return run


@pytest.mark.parametrize('fraction, exact, paper', [(0.29, 29, 28), (0.57, 57, 56)])
def test_every_entry_point_agrees_on_the_budget(cli, run100, fraction, exact, paper):
    """select (exact), baseline and verify keep floor(fraction N); paper mode keeps the reference's int(fraction * N)."""
    assert cli('cluster', run100, '--k', 5, '--niter', 10).returncode == 0
    outs = {}
    for name, args in {'exact': ('select', run100, '--mode', 'exact'), 'paper': ('select', run100, '--mode', 'paper'),
                       'random': ('baseline', 'random', run100)}.items():
        res = cli(*args, '--fraction', fraction, '--out', run100/name)
        assert res.returncode == 0, res.stderr
        outs[name] = np.load(run100/name/'indices.npy')
        ok = cli('verify', run100/name, '--rederive')
        assert ok.returncode == 0 and 're-derived: identical indices' in ok.stdout, ok.stdout + ok.stderr
    assert len(outs['exact']) == len(outs['random']) == exact
    man = json.loads((run100/'paper'/'manifest.json').read_text())
    assert man['counts']['budget'] == paper
    assert len(outs['paper']) == paper - man['counts']['shortfall']
