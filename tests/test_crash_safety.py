"""Crash safety: `kill -9` at random points of a stage, then the same command again, gives byte-identical
outputs, and no killed run ever leaves a file under a final name that is not a finished output."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest

from conftest import run_cli
from coincide.testbed.synthetic import synthetic_run

COINCIDE = str(Path(sys.executable).parent/'coincide')


def make_run(root: Path) -> Path:
    """A run folder with 12,000 planted unit-norm float16 embeddings of width 64 in 40 clusters, not yet clustered."""
    run = synthetic_run(root, n=12_000, d=64, k=40, zipf=0.0, seed=1)
    for name in ('centroids.npy', 'assignments.npy'): (run/name).unlink()
    return run


def kill_at(args, delay: float):
    """Start `coincide ARGS`, SIGKILL it after `delay` seconds (if still running); True if it was killed."""
    proc = subprocess.Popen([COINCIDE, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try: proc.wait(timeout=delay); return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL); proc.wait(); return True


def finished_files(folder: Path, names) -> dict:
    return {n: (folder/n).read_bytes() for n in names if (folder/n).exists()}


def timed(args) -> float:
    t = time.time(); res = run_cli(*args); assert res.returncode == 0, res.stderr
    return time.time() - t


def check_kills(args, folder, names, reference, seconds, seed):
    """Kill `args` three times at random points; after each, a file under a final name is complete, and a rerun matches `reference`."""
    rng = np.random.default_rng(seed)
    for delay in rng.uniform(0.3, seconds, size=3):
        for n in names: (folder/n).unlink(missing_ok=True)
        kill_at(args, float(delay))
        for n, data in finished_files(folder, names).items():
            if n.endswith('.npy'): np.load(folder/n, allow_pickle=False)  # loads: a whole file, never a partial one
            elif n.endswith('.json'): json.loads(data)
            else: assert data.endswith(b'\n')
        res = run_cli(*args); assert res.returncode == 0, res.stderr
        assert finished_files(folder, names) == reference
        assert not [p.name for n in names for p in folder.glob(f'.{n}.*.part')]  # the rerun removed the killed writer's temporary files


CLUSTER_OUT = ['centroids.npy', 'assignments.npy']
SELECT_OUT = ['indices.npy', 'clusters.csv']


@pytest.mark.slow
def test_cluster_survives_kill_9(tmp_path):
    run = make_run(tmp_path/'run')
    args = ['cluster', run, '--k', 40, '--niter', 50]
    seconds = timed(args)
    reference = finished_files(run, CLUSTER_OUT)
    check_kills(args, run, CLUSTER_OUT, reference, seconds, seed=0)


@pytest.mark.slow
def test_select_survives_kill_9(tmp_path):
    run = make_run(tmp_path/'run')
    assert run_cli('cluster', run, '--k', 40, '--niter', 20).returncode == 0
    out = tmp_path/'sel'
    args = ['select', run, '--fraction', 0.3, '--out', out]
    seconds = timed(args)
    reference = finished_files(out, SELECT_OUT)
    check_kills(args, out, SELECT_OUT, reference, seconds, seed=1)
    assert json.loads((out/'manifest.json').read_text())['counts']['selected'] == int(0.3 * 12_000)


@pytest.mark.slow
def test_extract_survives_kill_9_at_three_points(tmp_path):
    """Kill `coincide extract` after 1, 3 and 5 of its 8 batches; each rerun resumes to the bytes of an uninterrupted run."""
    from test_activations import SLOW_CLI, args
    from test_families import make_records, model_spec
    model, data = model_spec('llava', tmp_path/'models'), make_records(tmp_path/'data')
    assert run_cli(*args(data, model, tmp_path/'whole', '--batch-size', 1)).returncode == 0
    whole = (tmp_path/'whole'/'embeddings.npy').read_bytes()
    for point in (1, 3, 5):
        out = tmp_path/f'killed-{point}'
        cmd = [sys.executable, '-c', SLOW_CLI, *map(str, args(data, model, out, '--batch-size', 1))]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        progress, t0 = out/'parts'/'part-0-of-1.progress.json', time.time()
        while not (progress.exists() and json.loads(progress.read_text())['batches_done'] >= point):
            assert proc.poll() is None and time.time() - t0 < 120
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL); proc.wait()
        assert not (out/'embeddings.npy').exists()
        res = run_cli(*args(data, model, out, '--batch-size', 1))
        assert res.returncode == 0, res.stderr
        assert (out/'embeddings.npy').read_bytes() == whole
