"""Give notebooks an "Open in Colab" badge and a first cell that installs this package on Colab.

    python tools/add_colab_cells.py                       # every notebook under nbs/
    python tools/add_colab_cells.py nbs/index.ipynb ...   # only these

The badge is a markdown cell right after the title cell (in the README's notebook it opens the
paper-scale tutorial) (nbdev turns the title cell into the page's
front matter, so a badge inside it would vanish from the docs). The install cell follows the badge;
code cells above the title other than `#| default_exp` move below it, so on Colab it runs first.
Off Colab the install cell does nothing, so `nbdev_test` runs it as a no-op; it carries no
directive, so `nbdev_export` ignores it and readers see it. Running the script again updates both
cells in place (their ids are kept) and changes nothing else.
"""
import argparse, configparser, json, re, secrets
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BADGE_MARK = '[![Open In Colab]'
INSTALL_MARK = '# Colab: install '

def settings() -> configparser.SectionProxy:
    "The `[DEFAULT]` section of the repository's settings.ini, interpolated."
    cfg = configparser.ConfigParser()
    cfg.read(ROOT/'settings.ini')
    return cfg['DEFAULT']

def badge(nb_path:Path, cfg) -> str:
    "The badge markdown: a link that opens `nb_path` (for the README's notebook: the paper-scale tutorial) on Colab."
    user, repo = cfg['git_url'].rstrip('/').split('/')[-2:]
    if nb_path.name == cfg['readme_nb']: nb_path = ROOT/cfg['nbs_path']/'tutorials'/'paper_scale_colab.ipynb'
    rel = nb_path.resolve().relative_to(ROOT).as_posix()
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{user}/{repo}/blob/{cfg['branch']}/{rel})")

def install_code(cfg) -> str:
    "The install cell: on Colab pip-installs the package with its test bed (Colab's torch satisfies it and stays)."
    return (f"{INSTALL_MARK}{cfg['lib_name']} with its test bed; anywhere else this cell does nothing.\n"
            "import sys\n"
            "if 'google.colab' in sys.modules:\n"
            f"    !pip install -q \"{cfg['lib_name']}[testbed] @ git+{cfg['git_url']}\"")

def text(cell) -> str: return ''.join(cell['source'])

def new_cell(kind:str, source:str, old=None) -> dict:
    "A markdown or code cell with `source`, keeping the id (and outputs) of `old` if given."
    cell = dict(old) if old else {'cell_type': kind, 'id': secrets.token_hex(4), 'metadata': {}}
    if kind == 'code' and not old: cell |= {'execution_count': None, 'outputs': []}
    return cell | {'source': source.splitlines(True)}

def is_title(cell) -> bool: return cell['cell_type'] == 'markdown' and re.search(r'^#\s+\S', text(cell), re.M) is not None

def is_directive_only(cell) -> bool:
    "A code cell holding only `#|` directives (such as `#| default_exp`), which does nothing when run."
    return all(l.startswith('#|') for l in text(cell).splitlines() if l.strip())

def without_badge(cell) -> dict:
    "`cell` with any badge line (and the blank line after it) removed."
    return cell | {'source': re.sub(r'^\[!\[Open In Colab\].*\n?(\s*\n)?', '', text(cell), flags=re.M).splitlines(True)}

def add_colab_cells(nb:dict, nb_path:Path, cfg) -> dict:
    "`nb` with its badge and install cell in place, created or updated."
    cells = nb['cells']
    old_badge = next((c for c in cells if c['cell_type'] == 'markdown' and text(c).startswith(BADGE_MARK)), None)
    old_install = next((c for c in cells if c['cell_type'] == 'code' and text(c).startswith(INSTALL_MARK)), None)
    cells = [c for c in cells if c is not old_badge and c is not old_install]
    t = next((i for i, c in enumerate(cells) if is_title(c)), None)
    if t is None: raise SystemExit(f"{nb_path}: no markdown cell with a '# Title' to put the badge after")
    cells[t] = without_badge(cells[t])
    before = [c for c in cells[:t] if c['cell_type'] == 'code' and not is_directive_only(c)]
    head = [c for c in cells[:t + 1] if not any(c is b for b in before)]
    added = [new_cell('markdown', badge(nb_path, cfg), old_badge), new_cell('code', install_code(cfg), old_install)]
    return nb | {'cells': head + added + before + cells[t + 1:]}

def notebooks(paths:list) -> list:
    "The notebooks named, or every notebook under nbs/ (none in folders or files starting with _ or .)."
    if paths: return [Path(p) for p in paths]
    nbs = ROOT/settings()['nbs_path']
    return sorted(p for p in nbs.rglob('*.ipynb') if not any(s[0] in '_.' for s in p.relative_to(nbs).parts))

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('paths', nargs='*', help='notebooks (default: every notebook under nbs/)')
    cfg = settings()
    for path in notebooks(p.parse_args().paths):
        old = path.read_text(encoding='utf-8')
        new = json.dumps(add_colab_cells(json.loads(old), path, cfg), sort_keys=True, indent=1, ensure_ascii=False) + '\n'
        if new != old: path.write_text(new, encoding='utf-8'); print(f'updated {path}')

if __name__ == '__main__': main()
