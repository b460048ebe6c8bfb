"""The method runs without the test bed's libraries: with peft, scikit-image, scikit-learn and scipy
hidden from every module finder (as if not installed), extract -> cluster -> select -> a baseline -> verify work end to end on a fixture,
and `coincide demo` exits with status 2 naming the `coincide[testbed]` extra."""
import json, os, subprocess, sys
from pathlib import Path
import numpy as np

from test_families import LAYERS, make_records, model_spec

TESTBED_LIBRARIES = ('peft', 'scipy', 'skimage', 'sklearn')

PIPELINE = r'''
import sys
class Without:
    "A module finder that finds nothing of the blocked libraries, as if they were not installed."
    def __init__(self, finder): self.finder = finder
    def __getattr__(self, attr): return getattr(self.finder, attr)     # find_distributions, invalidate_caches
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {BLOCKED}: return None
        return self.finder.find_spec(name, path, target)
sys.meta_path[:] = [Without(f) for f in sys.meta_path]
from coincide.cli import main, run
data, model, out = sys.argv[1:4]
run('extract', '--data', data, '--images', f'{data}/../images', '--model', model, '--layers', *LAYERS,
    '--out', out, '--batch-size', 2, '--num-workers', 0)
run('cluster', out, '--k', 3, '--niter', 5)
run('select', out, '--fraction', 0.5, '--out', f'{out}/select')
run('baseline', 'random', out, '--fraction', 0.5, '--data', data, '--out', f'{out}/random')
run('verify', f'{out}/select', '--rederive')
run('verify', f'{out}/random', '--rederive')
blocked = sorted(m for m in sys.modules if m.split('.')[0] in {BLOCKED})
testbed = sorted(m for m in sys.modules if m.startswith('coincide.testbed'))
print('demo exit status', main(['demo', '--quick', '--out', f'{out}/demo']))
print('imported', blocked, testbed)
'''


def test_method_runs_without_testbed_libraries(tmp_path):
    data = make_records(tmp_path/'data')
    model = model_spec('llava', tmp_path/'models')
    script = PIPELINE.replace('LAYERS', repr([str(l) for l in LAYERS])).replace('{BLOCKED}', repr(set(TESTBED_LIBRARIES)))
    env = {**os.environ, 'HF_HUB_OFFLINE': '1'}
    res = subprocess.run([sys.executable, '-c', script, str(data), model, str(tmp_path/'run')],
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert 'demo exit status 2' in res.stdout, res.stdout
    assert 'pip install "coincide[testbed]"' in res.stderr, res.stderr[-2000:]
    assert 'imported [] []' in res.stdout, res.stdout        # neither a blocked library nor any test-bed module was loaded
    n = len(json.loads(data.read_text()))
    for sel in ('select', 'random'):
        idx = np.load(tmp_path/'run'/sel/'indices.npy')
        assert len(idx) == n // 2 and len(set(idx.tolist())) == n // 2 and idx.max() < n
