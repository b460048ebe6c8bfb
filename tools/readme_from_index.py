"""Write README.md from nbs/index.ipynb, as `nbdev_readme` would without quarto.

    python tools/readme_from_index.py           # write README.md
    python tools/readme_from_index.py --check   # exit 1 if README.md is not in step with the notebook

Markdown cells are copied as they are; code cells that a reader sees (no `#| hide`, not the Colab
install cell) become fenced Python blocks; the Colab badge is kept; image paths relative to nbs/
(`images/...`) are made relative to the repository's root.
"""
import argparse, json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def shown(cell) -> bool:
    "Whether a cell of the index belongs in the README."
    src = ''.join(cell['source'])
    if cell['cell_type'] == 'markdown': return True
    return not src.lstrip().startswith(('#| hide', '#|hide', '# Colab: install'))

def readme_text(nb_path:Path) -> str:
    "The README's text: the index's shown cells, separated by blank lines."
    parts = []
    for cell in json.loads(nb_path.read_text(encoding='utf-8'))['cells']:
        if not shown(cell): continue
        src = ''.join(cell['source']).strip('\n')
        parts.append(src if cell['cell_type'] == 'markdown' else f'```python\n{src}\n```')
    text = '\n\n'.join(parts) + '\n'
    return text.replace('](images/', '](nbs/images/')                        # the index's images live in nbs/images/

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--check', action='store_true', help='only check that README.md is in step')
    args = p.parse_args()
    text, readme = readme_text(ROOT/'nbs'/'index.ipynb'), ROOT/'README.md'
    if args.check:
        if readme.read_text(encoding='utf-8') != text: sys.exit('README.md is not in step with nbs/index.ipynb: run python tools/readme_from_index.py')
    else: readme.write_text(text, encoding='utf-8')
