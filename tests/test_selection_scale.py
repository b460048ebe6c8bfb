"""Greedy MMD and the selection stage at scale: the same picks as before the cache change, the torch path, workers."""
import json, os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import reference_greedy
from coincide.core import budget_size
from coincide.selection import greedy_mmd, select_coincide
from coincide.kernels import density_sums
from coincide.testbed.synthetic import synthetic_run
from naive_coincide import load_run, naive_greedy, naive_kernel, naive_select

try:
    import torch
    HAS_CUDA = torch.cuda.is_available()
except ImportError: HAS_CUDA = False
cuda = pytest.mark.skipif(not HAS_CUDA, reason='gpu: needs a CUDA device')


def cluster(n, d, seed, spread=1.0, dtype=np.float16, dup=0):
    rng = np.random.default_rng(seed)
    x = 0.6 * rng.normal(size=d) / np.sqrt(d) + spread * rng.normal(size=(n, d)) / np.sqrt(d)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    if dup: x[rng.choice(n, dup, replace=False)] = x[rng.choice(n, dup, replace=False)]
    return x.astype(dtype)


CLUSTERS = [dict(n=300, d=64, seed=0), dict(n=1000, d=128, seed=1, dup=200), dict(n=2500, d=256, seed=2, spread=0.4),
            dict(n=800, d=48, seed=3, dtype=np.float32, dup=50), dict(n=600, d=32, seed=4, dtype=np.float64, spread=2.0)]


@pytest.mark.parametrize('case', range(len(CLUSTERS)))
def test_greedy_same_picks_as_before(case):
    x = cluster(**CLUSTERS[case])
    n = len(x)
    for m in (1, n // 5, n // 2):
        want = reference_greedy.greedy_mmd(x, m)
        np.testing.assert_array_equal(greedy_mmd(x, m), want)
        np.testing.assert_array_equal(greedy_mmd(x, m, sigma=0.7, cache_bytes=8 * n * 40), reference_greedy.greedy_mmd(x, m, sigma=0.7))


def test_greedy_ties_lowest_position_with_many_duplicates():
    x = cluster(200, 16, 7)[np.random.default_rng(0).integers(0, 40, 400)]      # 400 rows, at most 40 distinct
    want = reference_greedy.greedy_mmd(x, 400)
    np.testing.assert_array_equal(greedy_mmd(x, 400), want)
    first = {}
    for t, p in enumerate(want): first.setdefault(x[p].tobytes(), []).append(p)
    assert all(v == sorted(v) for v in first.values())                             # equal rows are taken in position order


def test_predicted_batches_keep_picks_on_near_ties():
    """30 points repeated 5 times each, most copies moved by 1e-6, the rest exact duplicates: near-ties everywhere (the smallest
    relative gap is ~1e-8). The look-ahead decides which rows are computed, never the picks: the same with any batch, pool and cache."""
    rng = np.random.default_rng(11)
    n = 150
    x = (cluster(30, 24, 11, dtype=np.float64)[rng.integers(0, 30, n)] + 1e-6 * rng.normal(size=(n, 24)) * (rng.random((n, 1)) < 0.7)).astype(np.float32)
    want, gap = naive_greedy(naive_kernel(x, 1.0), 100)
    assert 1e-12 < gap < 1e-6, gap                                                  # near-ties, yet far above rounding
    np.testing.assert_array_equal(reference_greedy.greedy_mmd(x, 100), want)
    for cache_bytes, batch, pool in ((1 << 30, 32, 4096), (8 * n * 20, 16, 64), (8 * n * 20, 32, 6), (8 * n * 20, 1, 4096)):
        stats = {}
        np.testing.assert_array_equal(greedy_mmd(x, 100, cache_bytes=cache_bytes, batch=batch, pool=pool, stats=stats), want)
        assert cache_bytes > 8 * n * n or (stats['known'] == 21 and stats['batches'] > 20)   # 22 rows of cache: most picks need a batch


def test_torch_cpu_picks_equal_numpy():
    pytest.importorskip('torch')
    for case in CLUSTERS[:4]:
        x = cluster(**case)
        m = len(x) // 4
        np.testing.assert_array_equal(greedy_mmd(x, m, device='cpu'), greedy_mmd(x, m))
        small = 8 * len(x) * 60                                                     # 60 rows: the look-ahead and batches on torch too
        np.testing.assert_array_equal(greedy_mmd(x, m, device='cpu', cache_bytes=small), greedy_mmd(x, m, cache_bytes=small))


@pytest.mark.parametrize('case', [dict(seed=0), dict(seed=3, n=300, k=15, dup=40, dtype=np.float32), dict(seed=2, n=250, k=8, d=12, empty=3)])
def test_torch_cpu_selection_equals_numpy(tmp_path, case):
    pytest.importorskip('torch')
    run = synthetic_run(tmp_path/'run', **case)
    for mode in ('exact', 'paper'):
        a, ta = select_coincide(run, 0.3, mode=mode, progress=False)
        b, tb = select_coincide(run, 0.3, mode=mode, progress=False, device='cpu')
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(tb['D'], ta['D'], rtol=1e-12); np.testing.assert_allclose(tb['S'], ta['S'], rtol=1e-12, atol=1e-15)


@cuda
def test_gpu_selection_equals_cpu(tmp_path):
    run = synthetic_run(tmp_path/'run', n=2000, k=20, d=64, seed=5)
    for mode in ('exact', 'paper'):
        np.testing.assert_array_equal(select_coincide(run, 0.2, mode=mode, progress=False, device='cuda')[0],
                                      select_coincide(run, 0.2, mode=mode, progress=False)[0])
    x = cluster(3000, 256, 9)
    np.testing.assert_array_equal(greedy_mmd(x, 600, device='cuda'), greedy_mmd(x, 600))


def test_workers_give_the_same_bytes(tmp_path, cli):
    run = synthetic_run(tmp_path/'run', n=600, k=12, dup=20, seed=6)
    for w in (1, 2):
        res = cli('select', run, '--fractions', '0.1', '0.3', '--workers', w, '--out', tmp_path/f'w{w}')
        assert res.returncode == 0, res.stderr
    for fr in ('0.1', '0.3'):
        for f in ('indices.npy', 'clusters.csv'):
            assert (tmp_path/'w1'/f'fraction-{fr}'/f).read_bytes() == (tmp_path/'w2'/f'fraction-{fr}'/f).read_bytes()


def test_clusters_too_large_to_pair_run_alone(tmp_path):
    """With workers, a cluster whose float64 rows exceed `cache_bytes` runs in this process on its own (two such clusters at
    once took the stage at D = 20,480 past 4 GiB); the others go to the processes; the selection does not change."""
    from coincide import selection as S
    run = synthetic_run(tmp_path/'run', n=600, k=12, dup=20, seed=6, zipf=1.2)
    sizes = np.bincount(np.load(run/'assignments.npy'))
    cache = 8 * 16 * int(np.sort(sizes)[-3])                                       # the 2 largest clusters (d = 16) exceed it
    calls = []
    def density_pass(*task):                                                       # the package's name: the processes use the real one
        calls.append(len(task[1])); return S.density_pass(*task)
    order = np.argsort(np.load(run/'assignments.npy'), kind='stable')
    starts = np.concatenate([[0], np.cumsum(sizes)])
    tasks = [(run/'embeddings.npy', order[starts[j]:starts[j + 1]], 1.0, 3, cache, None) for j in range(len(sizes))]
    alone = 8 * sizes * 16 > cache
    got = S.map_clusters(density_pass, tasks, 2, progress=False, alone=alone)
    assert sorted(calls) == sorted(sizes[alone].tolist()) and alone.sum() == 2
    for (D, r, p, _), t in zip(got, tasks):
        D1, r1, p1, _ = S.density_pass(*t)
        assert D == D1 and np.array_equal(r, r1) and np.array_equal(p, p1)
    one, two = (S.select_sweep(run, [0.2, 0.4], cache_bytes=cache, workers=w, progress=False) for w in (1, 2))
    for fr in (0.2, 0.4): np.testing.assert_array_equal(one[fr][0], two[fr][0])

def test_cli_device_cpu(tmp_path, cli):
    pytest.importorskip('torch')
    run = synthetic_run(tmp_path/'run', n=300, k=12, seed=2)
    for dev in ([], ['--device', 'cpu']):
        res = cli('select', run, '--fraction', '0.2', *dev, '--out', tmp_path/('torch' if dev else 'numpy'))
        assert res.returncode == 0, res.stderr
    np.testing.assert_array_equal(np.load(tmp_path/'torch'/'indices.npy'), np.load(tmp_path/'numpy'/'indices.npy'))
    assert json.loads((tmp_path/'torch'/'manifest.json').read_text())['params']['device'] == 'cpu'


def test_budget_029_of_100(tmp_path, cli):
    run = synthetic_run(tmp_path/'run', n=100, k=5, seed=1)
    assert cli('select', run, '--fraction', '0.29', '--mode', 'exact', '--out', tmp_path/'e').returncode == 0
    assert len(np.load(tmp_path/'e'/'indices.npy')) == 29 == budget_size(100, 0.29)
    res = cli('select', run, '--fraction', '0.29', '--mode', 'paper', '--out', tmp_path/'p')
    assert res.returncode == 0, res.stderr
    man = json.loads((tmp_path/'p'/'manifest.json').read_text())
    assert man['counts']['budget'] == 28 == int(0.29 * 100)
    emb, layout, cen, a = load_run(run)
    want, shortfall, _ = naive_select(emb, layout, cen, a, 0.29)
    np.testing.assert_array_equal(np.load(tmp_path/'p'/'indices.npy'), want)
    assert man['counts']['shortfall'] == shortfall


def test_density_pass_keeps_rows_beside_the_float64_rows(tmp_path):
    """The density pass keeps kernel rows for the early picks only in the room `cache_bytes` leaves beside the cluster's
    float64 rows (at D = 20,480 a full row cache beside them took the stage past 4 GiB); the picks do not change."""
    import tracemalloc
    from threadpoolctl import threadpool_limits
    from coincide.selection import _keep_bytes, density_pass
    x = cluster(2000, 1024, 5)                                                     # float64 rows: 15.6 MiB
    np.save(tmp_path/'emb.npy', x)
    peaks = {}
    for mb in (24, 56):                                                            # room for 549 rows / all 2,000 (32 MB)
        tracemalloc.start()
        with threadpool_limits(1, user_api='blas'):                                # blocks one at a time: in threads, the peak varies by a block or two
            _, _, picks, _ = density_pass(tmp_path/'emb.npy', np.arange(2000), 1.0, 10, mb << 20, None)
        peaks[mb] = tracemalloc.get_traced_memory()[1]; tracemalloc.stop()
        np.testing.assert_array_equal(picks, greedy_mmd(x, 10))
    assert peaks[56] - peaks[24] > 16 << 20, peaks                                # 23 MB fewer kept rows (a full 24 MiB kept: 7 MB)
    assert _keep_bytes((11692, 20480), 18, 1 << 30) == 8 * 11692 * 50               # the picks plus one batch of 32
    assert _keep_bytes((2000, 2048), 10, 40 << 20) == (40 << 20) - 8 * 2000 * 2048 and _keep_bytes((2000, 2048), 0, 40 << 20) == 0


def test_look_ahead_float32_rows_without_a_large_copy():
    "The look-ahead's float32 rows: from one copy when it takes at most a quarter of the row cache, else converted per call; the same values."
    from coincide.selection import _RowCache
    u = cluster(300, 64, 8).astype(np.float64)
    ids = np.array([5, 0, 299])
    for cap, copied in ((8, False), (300, True)):                                  # copy 76,800 B against 19,200 / 720,000 B of cache
        cache = _RowCache(u, 1.0, np.empty((cap, 300)))
        np.testing.assert_array_equal(cache.single(ids), u[ids].astype(np.float32))
        np.testing.assert_array_equal(cache.single(7), u[7].astype(np.float32))
        assert (cache.u32 is not None) == copied

def test_no_large_symmetric_product():
    # numpy's OpenBLAS crashed (segfault) on a float64 `u @ u.T` of 20,000 x 2,048 with 2 threads: symmetric products
    # above the tile size go by tiles of general products (checked here on a small tile)
    code = ("import numpy as np; from coincide.kernels import dot_rows; "
            "u = np.random.default_rng(0).normal(size=(1500, 512)); "
            "assert np.allclose(dot_rows(u, u, tile=256), u @ u.T.copy(), rtol=1e-13, atol=1e-12); print('ok')")
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env={**os.environ, 'OPENBLAS_NUM_THREADS': '2'})
    assert res.returncode == 0 and 'ok' in res.stdout, res.stderr


def test_row_sums_same_bits_for_any_threads():
    "The row-sum pass in threads (one BLAS thread each) gives the bits of the one-thread loop, with BLAS on one or two threads."
    code = ("import hashlib, sys, numpy as np; sys.path.insert(0, 'tests'); from test_selection_scale import cluster; "
            "from coincide.kernels import weighted_row_sums; "
            "u = cluster(2500, 512, 5).astype(np.float64); w = np.arange(2500) % 3 + 1.0; rows = np.empty((1100, 2500)); "
            "r = weighted_row_sums(u, w, rows=rows, threads=None if sys.argv[1] == 'None' else int(sys.argv[1])); "
            "print(hashlib.sha256(r.tobytes() + rows.tobytes()).hexdigest())")
    runs = [subprocess.run([sys.executable, '-c', code, threads], capture_output=True, text=True, cwd=Path(__file__).parents[1],
                           env={**os.environ, 'OPENBLAS_NUM_THREADS': blas}) for blas, threads in
            [('1', '1'), ('2', '1'), ('2', '2'), ('2', 'None'), ('1', '3')]]   # 6 blocks of 1,024 (the default), 1,100 kept rows
    assert all(res.returncode == 0 for res in runs), [res.stderr[-1000:] for res in runs]
    assert len({res.stdout for res in runs}) == 1, [res.stdout for res in runs]


@pytest.mark.slow
def test_big_cluster_two_threads():
    "Density and greedy MMD on one 20,000-member cluster at D = 2,048 with two BLAS threads: no crash, same picks for a prefix."
    code = ("import numpy as np, sys; sys.path.insert(0, 'tests'); from test_selection_scale import cluster; "
            "from coincide.kernels import density_sums; from coincide.selection import greedy_mmd; "
            "x = cluster(20000, 2048, 0); u = x.astype(np.float64); from coincide.kernels import dot_rows; dot_rows(u, u); "
            "D, r = density_sums(x); p = greedy_mmd(x, 1000, r=r); "
            "import reference_greedy; q = reference_greedy.greedy_mmd(x, 300, r=r); "
            "assert (p[:300] == q).all(); print('ok', D)")
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=3000,
                         cwd=Path(__file__).parents[1], env={**os.environ, 'OPENBLAS_NUM_THREADS': '2'})
    assert res.returncode == 0 and 'ok' in res.stdout, (res.returncode, res.stderr[-2000:])


def test_float16_rows_released_before_the_row_sums(tmp_path, monkeypatch):
    """density_pass and greedy_pass hand the cluster's rows over: they are freed once their float64 copy exists, before the
    row-sum pass (at D = 20,480 the largest cluster's float16 rows are 0.67 GB beside 2.7 GB of float64)."""
    import weakref
    import coincide.selection as sel
    import coincide.kernels as tr
    x = cluster(1500, 64, 9)
    np.save(tmp_path/'emb.npy', x)
    refs, alive = [], []
    reader, row_sums = sel._reader(tmp_path/'emb.npy'), tr.weighted_row_sums
    def read(rows):
        out = reader(rows); refs.append(weakref.ref(out)); return out
    def sums(*a, **kw):
        alive.append(refs[-1]() is not None); return row_sums(*a, **kw)
    monkeypatch.setattr(sel, '_reader', lambda path: read)
    monkeypatch.setattr(tr, 'weighted_row_sums', sums); monkeypatch.setattr(sel, 'weighted_row_sums', sums)
    D, r, picks, _ = sel.density_pass(tmp_path/'emb.npy', np.arange(1500), 1.0, 5, 1 << 20, None)
    late = sel.greedy_pass(tmp_path/'emb.npy', np.arange(1500), 20, 1.0, None, 1 << 20, None)   # no r: greedy_mmd sums the rows itself
    assert alive == [False, False]
    np.testing.assert_array_equal(picks, greedy_mmd(x, 5)); np.testing.assert_array_equal(late, greedy_mmd(x, 20))
    np.testing.assert_allclose(r, density_sums(x)[1], rtol=1e-12)
