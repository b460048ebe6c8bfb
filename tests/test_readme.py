"""README.md is written from nbs/index.ipynb (quarto, which nbdev_readme needs, is not available here)."""
import subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_is_in_step_with_the_index():
    res = subprocess.run([sys.executable, str(ROOT/'tools'/'readme_from_index.py'), '--check'], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_readme_is_short_and_opens_with_the_three_paths():
    "At most 12,000 characters; the Colab, pip and make paths in its first 40 lines."
    text = (ROOT/'README.md').read_text(encoding='utf-8')
    head = '\n'.join(text.splitlines()[:40])
    assert len(text) <= 12_000, len(text)
    for path in ('colab.research.google.com', 'pip install', 'make demo', 'make test'): assert path in head, path
