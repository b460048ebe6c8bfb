"""No unsafe loading: hub code only with --trust-remote-code, .npy without pickle, no eval/exec/pickle in the package."""
import ast, pathlib
import numpy as np
import pytest
import transformers
from coincide.activations import load_reference
from coincide.core import CoincideError, load_npy

PACKAGE = pathlib.Path(__file__).resolve().parents[1]/'coincide'


class Stop(Exception): pass


@pytest.fixture
def captured(monkeypatch):
    """Replace the Auto classes' loaders by ones that record their keyword arguments and stop."""
    seen = []
    def fake(*args, **kw): seen.append(kw); raise Stop
    monkeypatch.setattr(transformers.AutoProcessor, 'from_pretrained', fake)
    monkeypatch.setattr(transformers.AutoModelForImageTextToText, 'from_pretrained', fake)
    return seen


@pytest.mark.parametrize('flag', [False, True])
def test_remote_code_only_when_asked(captured, flag):
    with pytest.raises(Stop):
        load_reference('some/model', trust_remote_code=flag) if flag else load_reference('some/model')
    assert captured[0]['trust_remote_code'] is flag


def test_extract_cli_defaults_to_no_remote_code(cli):
    res = cli('extract', '--help')
    assert '--trust-remote-code' in res.stdout
    from coincide.cli import command_parser
    parser, _ = command_parser('extract')
    assert parser.parse_args(['--data', 'd.json', '--model', 'm', '--out', 'run']).trust_remote_code is False


def test_npy_with_objects_is_refused(tmp_path):
    np.save(tmp_path/'o.npy', np.array([{'x': 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CoincideError, match='o.npy'): load_npy(tmp_path/'o.npy', mmap=False)


def test_package_never_evaluates_or_unpickles():
    banned = {'eval', 'exec', 'compile', '__import__'}
    paths = sorted(PACKAGE.rglob('*.py'))
    assert PACKAGE/'testbed'/'training.py' in paths                  # the test bed's modules are scanned too
    for path in paths:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in banned, f'{path.relative_to(PACKAGE)}:{node.lineno} calls {node.func.id}'
            if isinstance(node, ast.keyword) and node.arg == 'allow_pickle':
                assert isinstance(node.value, ast.Constant) and node.value.value is False, f'{path.relative_to(PACKAGE)}:{node.lineno} allows pickle'
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, 'module', None) or '']
                assert not any(n.split('.')[0] in ('pickle', 'dill', 'cloudpickle') for n in names), f'{path.relative_to(PACKAGE)}:{node.lineno} imports pickle'
