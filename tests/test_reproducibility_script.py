"The comparison logic of bench/reproducibility.py on two small fake demo outputs (no demo runs)."
import importlib.util, json, shutil
from pathlib import Path
import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1]/'bench'/'reproducibility.py'


@pytest.fixture(scope='module')
def repro():
    spec = importlib.util.spec_from_file_location('reproducibility', SCRIPT)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def _stage(cache:Path, key:str, files:dict, params:dict|None=None, result:dict|None=None):
    "A stage folder: its output files and, with `params`, a done.json as the demo writes it."
    f = cache/key; f.mkdir(parents=True)
    for name, data in files.items():
        (f/name).parent.mkdir(parents=True, exist_ok=True)
        np.save(f/name, data) if name.endswith('.npy') else (f/name).write_text(data)
    if params is not None:
        (f/'done.json').write_text(json.dumps({'stage': key, 'params': params, 'result': {'seconds': 1.0, **(result or {})}}))
    (f/'x.manifest.json').write_text(json.dumps({'path': str(f)}))     # a record, not an output: never compared


def fake_demo(out:Path, seconds:float=0.1) -> Path:
    "A demo output folder with a benchmark, extraction, scores, two selections, two targets and results.csv."
    cache, acc = out/'cache', {'digits': 0.5, 'shapes': 0.25}
    keys = {'benchmark': 'benchmark-b', 'extract': 'extract-e', 'cluster': 'cluster-c', 'select-coincide': 'select-coincide-s',
            'scores': 'scores-r', 'select-random-0': 'select-random-0r', 'target-coincide-0': 'target-coincide-0-t',
            'target-random-0': 'target-random-0-t'}
    _stage(cache, keys['benchmark'], {'train.json': '[1, 2, 3]'})
    _stage(cache, keys['extract'], {'embeddings.npy': np.linspace(0, 1, 40, dtype=np.float32).reshape(20, 2)}, {'benchmark': keys['benchmark']})
    _stage(cache, keys['cluster'], {'assignments.npy': np.arange(20) % 3, 'centroids.npy': np.ones((3, 2), np.float32)}, {'extract': keys['extract']})
    _stage(cache, keys['select-coincide'], {'indices.npy': np.arange(0, 20, 5)}, {'cluster': keys['cluster']})
    _stage(cache, keys['scores'], {'scores/el2n.npy': np.arange(20, dtype=np.float32)}, {'benchmark': keys['benchmark']})
    _stage(cache, keys['select-random-0'], {'indices.npy': np.arange(1, 20, 5)}, {'scores': keys['scores'], 'seed': 0})
    for m in ('coincide', 'random'): _stage(cache, keys[f'target-{m}-0'], {}, {'indices': 'a-hash'}, {'accuracy': acc})
    (out/'manifest.json').write_text(json.dumps({'stage_keys': keys}))
    (out/'results.csv').write_text(f'method,digits,select_seconds\nrandom,0.5,{seconds}\ncoincide,0.5,{seconds}\n')
    return out


def test_identical_runs(repro, tmp_path):
    a = fake_demo(tmp_path/'a')
    b = fake_demo(tmp_path/'b', seconds=7.3)                                # only the timing column differs
    ident = repro.compare_runs(a, b)
    assert list(ident) == [*json.loads((a/'manifest.json').read_text())['stage_keys'], 'results']
    assert all(v == {'identical': True} for v in ident.values())


def test_one_byte_of_one_selection(repro, tmp_path):
    a, b = fake_demo(tmp_path/'a'), fake_demo(tmp_path/'b')
    f = b/'cache'/'select-random-0r'/'indices.npy'
    data = bytearray(f.read_bytes()); data[-8] ^= 1; f.write_bytes(bytes(data))  # the last index, 16 -> 17
    ident = repro.compare_runs(a, b)
    assert [s for s, v in ident.items() if not v['identical']] == ['select-random-0']
    assert ident['select-random-0']['reason'] == 'same inputs; indices.npy: 3 of 4 indices in common'


def test_a_differing_input_is_the_reason(repro, tmp_path):
    a, b = fake_demo(tmp_path/'a'), fake_demo(tmp_path/'b')
    shutil.rmtree(b/'cache'/'cluster-c')
    _stage(b/'cache', 'cluster-c', {'assignments.npy': np.arange(20) % 2, 'centroids.npy': np.ones((3, 2), np.float32)}, {'extract': 'extract-e'})
    np.save(b/'cache'/'select-coincide-s'/'indices.npy', np.arange(0, 20, 4)[:4])
    ident = repro.compare_runs(a, b)
    assert ident['cluster']['reason'] == 'same inputs; assignments.npy: 12 of 20 entries differ (centroids.npy identical)'
    assert ident['select-coincide']['reason'] == 'its input cluster differs'
    assert ident['target-coincide-0']['identical'] and ident['extract']['identical']


def test_pushed_run_without_other_kernels_does_not_count(repro):
    k = {'aten': 'AVX2', 'mkl': {'isa': 'AVX2', 'cnr': 'AVX2'}, 'onednn': 'Intel AVX2', 'onednn_enabled': False,
         'numpy': ['X86_V3'], 'openblas': {'libscipy_openblas (numpy.libs)': 'Haswell'}, 'faiss': 'AVX2', 'threads': {'torch': 1}}
    runs = {'portable': {'kernels': k}, 'portable-pushed': {'kernels': dict(k)},
            'portable-threads2': {'kernels': k | {'threads': {'torch': 2}}}}
    checks = repro.check(runs)
    assert checks['portable-pushed'] == {'against': 'portable', 'switched': [], 'counts': False}
    assert checks['portable-threads2']['counts']
    runs['portable-pushed']['kernels'] = k | {'faiss': 'AVX512_SPR'}
    assert repro.check(runs)['portable-pushed'] == {'against': 'portable', 'switched': ['faiss'], 'counts': True}


def test_parse_verbose(repro):
    text = ('MKL_VERBOSE oneMKL 2024.0 Update 2 Product build 20240605 for Intel(R) 64 architecture Intel(R) Advanced Vector '
            'Extensions 2 (Intel(R) AVX2) enabled processors, Lnx 2.60GHz lp64 gnu_thread\n'
            'MKL_VERBOSE SGEMM(N,N,64,64,64,0x7ff,64) 1.08ms CNR:AVX2 Dyn:1 FastMM:1 TID:0  NThr:1\n'
            'onednn_verbose,v1,info,cpu,isa:Intel AVX2\n')
    assert repro.parse_verbose(text) == {'mkl': {'isa': 'AVX2', 'cnr': 'AVX2', 'threads': 1}, 'onednn': 'Intel AVX2'}
    assert repro.parse_verbose('') == {'mkl': None, 'onednn': None}
