"""`coincide cluster RUN` driven as a user would: planted clusters come back, runs repeat to the byte,
and every kind of bad input stops with exit 2 and a message that names it."""
import json, shutil, warnings
import numpy as np
import pytest
from coincide.clustering import agreement, spherical_kmeans
from coincide.testbed.synthetic import planted_clusters
from coincide.core import sha256_file

OUTPUTS = ('centroids.npy', 'assignments.npy', 'cluster.manifest.json')


def write_embeddings(path, x):
    """A run folder holding exactly `x` as its embeddings: planted, degenerate or broken rows, as each test needs."""
    path.mkdir(parents=True, exist_ok=True)
    np.save(path/'embeddings.npy', x)
    return path


@pytest.fixture
def planted(tmp_path):
    x, labels = planted_clusters(600, 24, 5, spread=0.1, seed=11)
    return write_embeddings(tmp_path/'run', x.astype(np.float16)), labels


@pytest.mark.parametrize('backend', ['faiss', 'torch'])
def test_planted_clusters_recovered(cli, planted, backend):
    run, labels = planted
    res = cli('cluster', run, '--k', 5, '--niter', 20, '--backend', backend, '--device', 'cpu', '--init', 'kmeans++')
    assert res.returncode == 0, res.stderr
    assert 'into 5 clusters (0 empty)' in res.stdout
    cent, assign = np.load(run/'centroids.npy'), np.load(run/'assignments.npy')
    assert cent.shape == (5, 24) and cent.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(cent, axis=1), 1, atol=1e-5)
    assert assign.shape == (600,) and assign.dtype == np.int64
    assert agreement(assign, labels) == 1.0 and agreement(labels, assign) == 1.0    # a bijection up to relabelling
    man = json.loads((run/'cluster.manifest.json').read_text())
    assert man['stage'] == 'cluster' and man['seed'] == 1234
    assert man['params']['k'] == 5 and man['params']['backend'] == backend and man['params']['niter'] == 20
    assert man['inputs']['embeddings']['sha256'] == sha256_file(run/'embeddings.npy')
    assert man['outputs']['assignments']['sha256'] == sha256_file(run/'assignments.npy')
    assert man['diagnostics']['n'] == 600 and man['diagnostics']['n_empty'] == 0
    assert man['diagnostics']['largest'] == np.bincount(labels).max()
    assert not list(run.glob('.*.part'))


def test_paper_mode_is_faiss_on_the_whole_array(cli, tmp_path):
    """Default settings = faiss Kmeans(d, K, niter=50, seed=1234, spherical=True) + flat IP search, to the byte,
    including faiss' 256-points-per-centroid subsample (N = 1,200 > 256 * 4)."""
    faiss = pytest.importorskip('faiss')
    x, _ = planted_clusters(1200, 16, 6, spread=0.6, seed=4)
    run = write_embeddings(tmp_path/'run', x)
    assert cli('cluster', run, '--k', 4).returncode == 0
    km = faiss.Kmeans(16, 4, niter=50, seed=1234, spherical=True); km.train(x)
    assert np.load(run/'centroids.npy').tobytes() == km.centroids.tobytes()
    assert np.array_equal(np.load(run/'assignments.npy'), km.index.search(x, 1)[1][:, 0])


def in_process(capsys, *args):
    """`coincide ARGS...` through the CLI's own entry point, in this process (each subprocess pays the torch
    import, seconds on a busy machine); returns (exit status, stderr). The console script itself is driven in
    the subprocess tests around these."""
    from coincide.cli import main
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def unit(n, d, seed=0):
    a = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


@pytest.mark.parametrize('backend, init', [('faiss', 'random'), ('faiss', 'kmeans++'), ('torch', 'random'), ('torch', 'kmeans++')])
def test_same_seed_same_bytes(cli, capsys, tmp_path, backend, init):
    """Two processes (paper-mode random init) or the same process twice (k-means++) write the same bytes;
    another seed writes others."""
    x, _ = planted_clusters(2000, 32, 30, spread=0.8, seed=2)
    runs = [write_embeddings(tmp_path/f'run{i}', x.astype(np.float16)) for i in range(3)]
    args = ['--k', 8, '--niter', 10, '--backend', backend, '--device', 'cpu', '--init', init, '--chunk', 700, '--max-points-per-centroid', 100]
    for run, seed in zip(runs, [1234, 1234, 7]):
        if init == 'random' and seed == 1234:
            res = cli('cluster', run, *args, '--seed', seed); rc, err = res.returncode, res.stderr
        else: rc, err = in_process(capsys, 'cluster', run, *args, '--seed', seed)
        assert rc == 0, err
    for name in ('centroids.npy', 'assignments.npy'):
        assert (runs[0]/name).read_bytes() == (runs[1]/name).read_bytes(), name
    assert (runs[2]/'centroids.npy').read_bytes() != (runs[0]/'centroids.npy').read_bytes()


def with_row(value, row=3):
    def f():
        x = unit(20, 8); x[row] = value; return x
    return f


BAD_EMBEDDINGS = {
    'NaN row': (with_row(np.nan), 'row 3 holds NaN or inf'),
    'inf row': (with_row(np.inf, 17), 'row 17 holds NaN or inf'),
    'zero row': (with_row(0.0, 5), 'row 5 is all zeros'),
    'not unit norm': (lambda: unit(20, 8) * 3, 'row 0 has norm 3'),
    '1-D': (lambda: unit(20, 8)[:, 0].copy(), 'expected a 2-D array'),
    '3-D': (lambda: unit(20, 8).reshape(4, 5, 8), 'expected a 2-D array'),
    'integers': (lambda: np.ones((20, 8), dtype=np.int32), 'holds int32 values'),
}


@pytest.mark.parametrize('case', list(BAD_EMBEDDINGS))
def test_bad_embeddings_named(capsys, tmp_path, case):
    make, message = BAD_EMBEDDINGS[case]
    run = write_embeddings(tmp_path/'run', make())
    rc, err = in_process(capsys, 'cluster', run, '--k', 2)
    assert rc == 2, err
    assert err.startswith('coincide cluster: error: ') and message in err and 'embeddings.npy' in err
    assert not any((run/o).exists() for o in OUTPUTS)


BAD_ARGS = {
    'K larger than N': (['--k', 21], '--k 21 is larger than the number of samples (20)'),
    'K zero': (['--k', 0], '--k 0: the number of clusters must be at least 1'),
    'K negative': (['--k', -3], '--k -3'),
    'niter zero': (['--k', 2, '--niter', 0], '--niter 0: at least one iteration'),
    'unknown backend': (['--k', 2, '--backend', 'sklearn'], "--backend 'sklearn' is unknown"),
    'unknown init': (['--k', 2, '--init', 'farthest'], "--init 'farthest' is unknown"),
    'PCA too wide': (['--k', 2, '--pca-dim', 9], '--pca-dim 9'),
    'chunk zero': (['--k', 2, '--chunk', 0], '--chunk 0'),
}


@pytest.mark.parametrize('case', list(BAD_ARGS))
def test_bad_arguments_named(capsys, tmp_path, case):
    args, message = BAD_ARGS[case]
    run = write_embeddings(tmp_path/'run', unit(20, 8))
    rc, err = in_process(capsys, 'cluster', run, *args)
    assert rc == 2, err
    assert err.startswith('coincide cluster: error: ') and message in err
    assert not any((run/o).exists() for o in OUTPUTS)


def test_bad_input_through_the_console_script(cli, tmp_path):
    run = write_embeddings(tmp_path/'run', with_row(np.nan)())
    res = cli('cluster', run, '--k', 2)
    assert res.returncode == 2 and 'row 3 holds NaN or inf' in res.stderr and 'Traceback' not in res.stderr
    res = cli('cluster', run, '--k', 21, '--backend', 'torch')
    assert res.returncode == 2 and '--k 21 is larger' in res.stderr and 'Traceback' not in res.stderr
    assert not any((run/o).exists() for o in OUTPUTS)


def test_missing_embeddings_says_run_extract(capsys, tmp_path):
    (tmp_path/'run').mkdir()
    rc, err = in_process(capsys, 'cluster', tmp_path/'run', '--k', 2)
    assert rc == 2 and 'embeddings.npy: not found' in err and 'coincide extract' in err
    rc, err = in_process(capsys, 'cluster', tmp_path/'nowhere', '--k', 2)
    assert rc == 2 and 'run folder not found' in err and 'Traceback' not in err


def test_truncated_embeddings(capsys, tmp_path):
    run = write_embeddings(tmp_path/'run', unit(200, 16))
    data = (run/'embeddings.npy').read_bytes()
    (run/'embeddings.npy').write_bytes(data[:len(data) // 2])
    rc, err = in_process(capsys, 'cluster', run, '--k', 2)
    assert rc == 2 and 'embeddings.npy' in err and 'truncated' in err
    assert 'Traceback' not in err


def test_cuda_without_gpu(capsys, tmp_path):
    torch = pytest.importorskip('torch')
    if torch.cuda.is_available(): pytest.skip('this machine has a GPU')
    run = write_embeddings(tmp_path/'run', unit(20, 8))
    rc, err = in_process(capsys, 'cluster', run, '--k', 2, '--backend', 'torch', '--device', 'cuda')
    assert rc == 2 and "device 'cuda'" in err and '--device cpu' in err
    assert 'Traceback' not in err


def test_collapse_fails_loudly_or_warns(cli, tmp_path):
    base = unit(1, 16)
    x = base + 1e-4 * unit(60, 16, seed=1)                 # sixty samples that are nearly the same vector
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    run = write_embeddings(tmp_path/'run', x)
    res = cli('cluster', run, '--k', 4, '--niter', 5)
    assert res.returncode == 2, res.stderr
    assert 'the clustering collapsed' in res.stderr and 'mean cosine between centroids' in res.stderr
    assert 'lower --k' in res.stderr and 'Traceback' not in res.stderr
    assert not any((run/o).exists() for o in OUTPUTS)
    res = cli('cluster', run, '--k', 4, '--niter', 5, '--allow-collapse')
    assert res.returncode == 0 and 'the clustering collapsed' in res.stderr
    assert all((run/o).exists() for o in OUTPUTS)


def test_pca_keeps_the_centroid_contract(capsys, tmp_path):
    x, labels = planted_clusters(500, 40, 4, spread=0.1, seed=8)
    run = write_embeddings(tmp_path/'run', x)
    rc, err = in_process(capsys, 'cluster', run, '--k', 4, '--backend', 'torch', '--device', 'cpu', '--pca-dim', 6, '--init', 'kmeans++')
    assert rc == 0, err
    cent, assign = np.load(run/'centroids.npy'), np.load(run/'assignments.npy')
    assert cent.shape == (4, 40)                          # back in the original space
    assert agreement(assign, labels) == 1.0
    for c in range(4):                                    # each centroid is its cluster's normalised mean
        m = x[assign == c].astype(np.float64).mean(0)
        np.testing.assert_allclose(cent[c], m / np.linalg.norm(m), atol=1e-5)


def test_few_rows_a_cluster_warned_in_python_not_by_faiss(capfd):
    x = planted_clusters(300, 16, 4, seed=0)[0]
    with pytest.warns(UserWarning, match=r'300 rows for 30 clusters, 10\.0 a cluster'):
        spherical_kmeans(x, 30, niter=5, backend='faiss')
    assert 'please provide at least' not in capfd.readouterr().err     # faiss' own C-level warning is silenced
    with warnings.catch_warnings():
        warnings.filterwarnings('error', message='k-means:')
        spherical_kmeans(x, 4, niter=5, backend='faiss')                  # 75 a cluster: no warning
