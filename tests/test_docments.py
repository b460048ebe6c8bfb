"""Every public function of the package has a docstring and a comment on each parameter (docments)."""
import importlib, inspect, pkgutil
import coincide
from fastcore.docments import docments


def public_modules() -> list:
    "Every public module of the package, the test bed's included."
    return [importlib.import_module(i.name) for i in pkgutil.walk_packages(coincide.__path__, 'coincide.')
            if not i.name.rsplit('.', 1)[-1].startswith('_')]


def undocumented() -> list:
    "(module, function, what is missing) for every public function short of the house style."
    missing = []
    for mod in public_modules():
        for name in getattr(mod, '__all__', []):
            fn = getattr(mod, name, None)
            if not inspect.isfunction(fn) or fn.__module__ != mod.__name__: continue
            if not fn.__doc__: missing.append((mod.__name__, name, 'docstring'))
            doc = docments(fn, full=True)
            params = [p for p, v in inspect.signature(fn).parameters.items() if v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)]
            missing += [(mod.__name__, name, p) for p in params if not doc[p]['docment']]
    return missing


def test_every_public_function_is_documented():
    assert undocumented() == []


def test_the_test_beds_modules_are_checked_too():
    assert {'coincide.testbed.training', 'coincide.clustering'} <= {m.__name__ for m in public_modules()}
