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
