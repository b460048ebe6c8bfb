"""Shared pytest set-up: offline hub, portable kernels, the `slow` marker, and a runner for the `coincide` CLI."""
import contextlib, io, os, subprocess, sys
from pathlib import Path
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

from coincide.testbed.portable import prepare_environment
prepare_environment()   # the test bed's portable kernels (before anything imports torch), as `coincide demo` runs them


def pytest_addoption(parser):
    parser.addoption('--runslow', action='store_true', default=False, help='also run tests marked slow')


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: takes minutes; run with --runslow (make test-slow)')


def pytest_collection_modifyitems(config, items):
    if config.getoption('--runslow'): return
    skip = pytest.mark.skip(reason='slow: run with --runslow')
    for item in items:
        if 'slow' in item.keywords: item.add_marker(skip)


def run_cli(*args, timeout=600, **kw):
    """Run `coincide ARGS...` as a user would, in a subprocess; returns the CompletedProcess."""
    cmd = [str(Path(sys.executable).parent/'coincide'), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture
def cli():
    return run_cli


def run_main(*args):
    """Run `coincide ARGS...` through `coincide.cli.main` in this process (no interpreter to start: for the many
    variants of one bad input; `run_cli` checks the installed command itself); returns a CompletedProcess."""
    import torch
    from coincide.cli import main
    out, err, onednn = io.StringIO(), io.StringIO(), torch.backends.mkldnn.enabled
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: code = main([str(a) for a in args])
        except SystemExit as e: code = e.code          # argparse's usage errors
        finally: torch.backends.mkldnn.enabled = onednn  # `coincide train` pins portable kernels: the next test finds them as they were
    return subprocess.CompletedProcess(['coincide', *map(str, args)], code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli_in_process():
    return run_main
