"""Every public function of the package has a docstring and a comment on each parameter (docments)."""
import importlib, inspect, pkgutil
import coincide
from fastcore.docments import docments


def undocumented() -> list:
    "(module, function, what is missing) for every public function short of the house style."
    missing = []
    for info in pkgutil.iter_modules(coincide.__path__):
        if info.name.startswith('_'): continue
        mod = importlib.import_module(f'coincide.{info.name}')
        for name in getattr(mod, '__all__', []):
            fn = getattr(mod, name, None)
            if not inspect.isfunction(fn) or fn.__module__ != mod.__name__: continue
            if not fn.__doc__: missing.append((info.name, name, 'docstring'))
            doc = docments(fn, full=True)
            params = [p for p, v in inspect.signature(fn).parameters.items() if v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)]
            missing += [(info.name, name, p) for p in params if not doc[p]['docment']]
    return missing


def test_every_public_function_is_documented():
    assert undocumented() == []
