"""Execute notebooks in place and store their outputs, skipping the cells `nbdev_test` skips.

    python tools/run_notebooks.py                          # every notebook nbdev_test would run
    python tools/run_notebooks.py nbs/05_selection.ipynb   # only these
    python tools/run_notebooks.py --flags "slow" ...       # also run cells flagged slow

Each notebook runs through nbdev's own `test_nb`: its front matter, its `#| eval: false` cells and
the `tst_flags` of settings.ini are honoured exactly as `nbdev_test` honours them, in the notebook's
own folder. Cells that ran get their new outputs; skipped cells keep what they had. Outputs are kept
light: progress bars (tqdm's lines rewritten in place, widget outputs) are dropped,
long plain texts are cut to their head and tail, figures are plain PNGs. The notebook is then written as
`nbdev_clean` writes it, so `nbdev_clean` changes nothing afterwards. A notebook that fails is left
untouched and the traceback is printed. Several notebooks run one after another, each in a fresh
process.
"""
import argparse, json, re, subprocess, sys
from pathlib import Path
import nbdev.test
from execnb.nbio import write_nb
from execnb.shell import CaptureShell
from nbdev.clean import clean_nb
from nbdev.config import get_config
from nbdev.doclinks import nbglob

WIDGET = 'application/vnd.jupyter.widget-view+json'
TQDM = re.compile(r'\[\d+:\d+(:\d+)?[<,]')   # tqdm's '[elapsed<remaining' or '[elapsed, rate'

class RecordingShell(CaptureShell):
    "The shell nbdev's `test_nb` runs a notebook in, keeping the outputs of the cells it ran, by cell id."
    outputs = {}
    def __init__(self, path=None, mpl_format='png', **kwargs): super().__init__(path, mpl_format=mpl_format, **kwargs)
    def cell(self, cell, **kwargs):
        cell.outputs = []   # a cell that prints nothing now must lose what it printed before
        super().cell(cell, **kwargs)
        RecordingShell.outputs[cell.id] = cell.outputs

def execute(path:Path, flags:list) -> dict|None:
    "Run `path` as `nbdev_test` would (also running cells flagged `flags`): outputs by cell id, None if it failed."
    cfg = get_config()
    RecordingShell.outputs = {}
    nbdev.test.CaptureShell, shell = RecordingShell, nbdev.test.CaptureShell
    try: ok, secs = nbdev.test.test_nb(path.absolute(), skip_flags=cfg.tst_flags.split(), force_flags=flags, basepath=cfg.config_path)
    finally: nbdev.test.CaptureShell = shell
    print(f"{path}: {'ran' if ok else 'FAILED'} in {secs:.0f} s", file=sys.stderr)
    return json.loads(json.dumps(RecordingShell.outputs)) if ok else None

def cut(lines:list, max_lines:int) -> list:
    "`lines` cut to their first and last `max_lines // 2` lines when longer than `max_lines`."
    if len(lines) <= max_lines: return lines
    h = max_lines // 2
    return lines[:h] + [f'... {len(lines) - 2 * h} lines left out ...\n'] + lines[-h:]

def without_progress(text:str) -> list:
    "The lines of a stream's `text` as a terminal would leave them, less progress bars (tqdm's lines rewritten in place)."
    res = []
    for line in re.findall(r'[^\n]*\n|[^\n]+$', text.replace('\r\n', '\n')):   # split at newlines only
        if '\r' not in line: res.append(line); continue
        shown = next((s for s in reversed(line.rstrip('\n').split('\r')) if s.strip()), '')   # what stays on screen
        if shown and not TQDM.search(shown): res.append(shown + '\n' * line.endswith('\n'))
    return res

def light(outputs:list, max_lines:int) -> list:
    "`outputs` without progress bars or widgets, long texts cut."
    res = []
    for o in outputs:
        if WIDGET in o.get('data', {}): continue
        if o['output_type'] == 'stream':
            o['text'] = cut(without_progress(''.join(o['text'])), max_lines)
            if not o['text']: continue
        for k, v in o.get('data', {}).items():
            if k == 'text/plain' and isinstance(v, list): o['data'][k] = cut(v, max_lines)
        res.append(o)
    return res

def store_outputs(path:Path, outputs:dict, max_lines:int):
    "Write `outputs` (by cell id) into the notebook at `path`, then clean it as `nbdev_clean` does."
    cfg = get_config()
    nb = json.loads(path.read_text(encoding='utf-8'))
    for c in nb['cells']:
        if c['cell_type'] == 'code' and c.get('id') in outputs: c['outputs'] = light(outputs[c['id']], max_lines)
    clean_nb(nb, cfg.clear_all, cfg.get('allowed_metadata_keys').split(), cfg.get('allowed_cell_metadata_keys').split(), cfg.clean_ids)
    write_nb(nb, path)

def run_one(path:Path, flags:list, max_lines:int) -> bool:
    "Execute one notebook in this process and store its outputs; False if it failed."
    nb = json.loads(path.read_text(encoding='utf-8'))
    if any(c['cell_type'] == 'code' and 'id' not in c for c in nb['cells']):
        raise SystemExit(f"{path}: cells without ids; run nbdev_clean first")
    outputs = execute(path, flags)
    if outputs is None: return False
    store_outputs(path, outputs, max_lines)
    return True

def notebooks(paths:list) -> list:
    "The notebooks named, those in the folders named, or (none named) every notebook `nbdev_test` runs."
    if not paths: return nbglob(as_path=True)
    return [f for p in map(Path, paths) for f in (nbglob(p, as_path=True) if p.is_dir() else [p])]

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('paths', nargs='*', help='notebooks or folders (default: all the notebooks nbdev_test runs)')
    p.add_argument('--flags', default='', help='space-separated test flags to run anyway, e.g. "slow gpu"')
    p.add_argument('--max-lines', type=int, default=60, help='longest text output kept whole')
    args = p.parse_args()
    files = notebooks(args.paths)
    if len(files) == 1: sys.exit(0 if run_one(files[0], args.flags.split(), args.max_lines) else 1)
    cmd = [sys.executable, __file__, '--flags', args.flags, '--max-lines', str(args.max_lines)]
    failed = [f for f in files if subprocess.run(cmd + [str(f)]).returncode != 0]
    if failed: sys.exit('failed: ' + ' '.join(map(str, failed)))

if __name__ == '__main__': main()
