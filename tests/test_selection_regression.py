"""The committed selection fixture gives the committed indices byte for byte, and the check catches small changes."""
import json
import numpy as np
from coincide.cli import main
from selection_regression import CASES, FIXTURE, run_select, selection_mismatches


def test_fixture_reproduces_committed_indices(tmp_path):
    assert selection_mismatches(FIXTURE, tmp_path) == []


def test_tau_change_is_caught(tmp_path):
    bad = selection_mismatches(FIXTURE, tmp_path, tau=0.11)
    assert {m.split('/')[0] for m in bad} == set(CASES), bad           # every case, paper and exact mode included
    assert all('first difference at position' in m for m in bad), bad


def test_one_row_change_is_caught(tmp_path):
    x = np.load(FIXTURE/'run'/'embeddings.npy').astype(np.float64)       # (480, 32) float16 unit rows
    j = int(np.load(FIXTURE/'expected'/'paper-0.3'/'indices.npy')[0])    # a selected record
    v = x[j] + 0.05 * np.random.default_rng(0).normal(size=x.shape[1])
    v /= np.linalg.norm(v)                                               # another unit vector, cosine ~0.96 with row j
    assert 0.9 < v @ x[j] < 0.99
    bad = selection_mismatches(FIXTURE, tmp_path, rows={j: v}, cases=['paper-0.3', 'exact-0.3'])
    assert [m.split('/')[0] for m in bad] == ['paper-0.3', 'exact-0.3'], bad


def test_fixture_is_a_run_the_pipeline_accepts(tmp_path, capsys):
    run = FIXTURE/'run'
    x, a, c = np.load(run/'embeddings.npy'), np.load(run/'assignments.npy'), np.load(run/'centroids.npy')
    assert x.dtype == np.float16 and np.allclose(np.linalg.norm(x.astype(np.float64), axis=1), 1, atol=2e-3)
    sizes = np.bincount(a, minlength=len(c))
    assert len(c) == 10 and sizes.min() == 1 and sizes.max() >= 100     # clusters of very different sizes, a singleton
    blocks = json.loads((run/'layout.json').read_text())['blocks']
    assert [(b['layer'], b['modality']) for b in blocks] == [(0, 'vision'), (0, 'text'), (1, 'vision'), (1, 'text')]
    assert run_select(run, tmp_path/'sel', CASES['exact-0.3'][0])[0] == 0
    assert main(['verify', str(tmp_path/'sel'), '--rederive']) == 0, capsys.readouterr().out
    man = json.loads((tmp_path/'sel'/'manifest.json').read_text())
    assert man['counts']['shortfall'] == 2 and man['counts']['selected'] == 144   # exact mode tops up the reference's shortfall
