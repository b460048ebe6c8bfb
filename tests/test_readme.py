"""README.md is written from nbs/index.ipynb (quarto, which nbdev_readme needs, is not available here)."""
import subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_is_in_step_with_the_index():
    res = subprocess.run([sys.executable, str(ROOT/'tools'/'readme_from_index.py'), '--check'], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
