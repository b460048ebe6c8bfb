"""Shared pytest set-up: offline hub, portable kernels, the `slow` marker, and a runner for the `coincide` CLI."""
import os, subprocess, sys
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
