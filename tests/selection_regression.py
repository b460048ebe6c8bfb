"""A selection regression check: committed embeddings and clusters must give committed indices, byte for byte.

The fixture `data/fixture/selection_regression/` holds a run folder (`run/`: 480 float16 unit rows of 32 columns,
`layout.json` with [vision, text] blocks for two layers, 10 clusters with their `assignments.npy` and
`centroids.npy`) and, for every case in `CASES`, the `indices.npy` that `coincide select` wrote
(`expected/<case>/...`). The centroids and assignments are inputs, not recomputed, so no k-means runs and the
expected indices depend on the selection alone: the same on any machine. When writing, the generator checks
that no rounding can flip the result (greedy, softmax order, budget rounding and the transferability threshold
all decided by a margin of at least `MARGIN`), that paper mode equals the naive implementation in
`naive_coincide.py`, and that tau 0.11 alters the indices of both modes.

Regenerate the fixture (only after an intended change of the selection's output) with

    python tests/selection_regression.py --write
"""
import argparse, io, json, shutil, tempfile
from contextlib import redirect_stdout, redirect_stderr
from pathlib import Path
import numpy as np

FIXTURE = Path(__file__).resolve().parents[1]/'data'/'fixture'/'selection_regression'
RUN_FILES = ('embeddings.npy', 'layout.json', 'centroids.npy', 'assignments.npy')
SEED = 2
SIZES = (150, 100, 70, 52, 42, 32, 20, 11, 2, 1)   # planted cluster sizes (N = 480): a large one down to a singleton
WIDTH = 32                                          # D: two layers, each [vision 8 | text 8]
MARGIN = 1e-6                                       # smallest relative gap allowed wherever rounding could decide
CASES = {  # case -> (`coincide select` arguments besides RUN and --out, the files it writes that must match)
    'paper-0.3': (['--fraction', '0.3', '--mode', 'paper'], ['indices.npy']),     # the reference: 142 records, shortfall 2
    'exact-0.3': (['--fraction', '0.3'], ['indices.npy']),                       # the default: 144 records, topped up
    'knn-sweep': (['--fractions', '0.15', '0.5', '--transfer', 'knn', '--knn', '3', '--sigma', '0.7'],
                  ['fraction-0.15/indices.npy', 'fraction-0.5/indices.npy']),
}


def unit(x): return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_run(folder:Path, seed:int=SEED) -> Path:
    "Write a run folder of planted clusters: nearest-centre assignments, normalised cluster means as centroids."
    rng, k, d = np.random.default_rng(seed), len(SIZES), WIDTH
    centres = unit(0.8 * rng.normal(size=d) / np.sqrt(d) + rng.normal(size=(k, d)) / np.sqrt(d))   # (k, d)
    scale = rng.uniform(0.3, 1.2, k)                                          # (k,) noise: larger, less dense
    lab = rng.permutation(np.repeat(np.arange(k), SIZES))                     # (n,) planted cluster
    x = unit(centres[lab] + scale[lab, None] * rng.normal(size=(len(lab), d)) / np.sqrt(d)).astype(np.float16)
    x64 = x.astype(np.float64)
    a = np.argmax(x64 @ centres.T, 1)                                         # (n,) nearest planted centre
    if (np.bincount(a, minlength=k) == 0).any(): raise ValueError(f'seed {seed}: a planted centre attracts no record')
    cen = np.stack([unit(x64[a == j].sum(0)) for j in range(k)]).astype(np.float32)   # (k, d)
    h = d // 4
    layout = {'blocks': [{'layer': l, 'modality': m, 'start': (2 * l + i) * h, 'stop': (2 * l + i + 1) * h}
                         for l in range(2) for i, m in enumerate(('vision', 'text'))]}
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder/'embeddings.npy', x)
    np.save(folder/'assignments.npy', a.astype(np.int64))
    np.save(folder/'centroids.npy', cen)
    (folder/'layout.json').write_text(json.dumps(layout, indent=1) + '\n')
    return folder


def run_select(run:Path, out:Path, args:list) -> tuple:
    "`coincide select RUN ARGS --out OUT` in this process through `coincide.cli.main`: (exit status, its stderr)."
    from coincide.cli import main
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        rc = main(['select', str(run), *args, '--out', str(out)])
    return rc, err.getvalue()


def _difference(got:Path, want:Path) -> str:
    "Where two .npy index files first differ."
    try: g, w = np.load(got), np.load(want)
    except Exception as e: return f'unreadable ({e})'
    if g.dtype != w.dtype or g.ndim != w.ndim: return f'dtype/shape {g.dtype}{g.shape} against {w.dtype}{w.shape}'
    n = min(len(g), len(w))
    pos = np.flatnonzero(g[:n] != w[:n])
    first = int(pos[0]) if len(pos) else n
    at = f'first difference at position {first}' + (f' (got {g[first]}, expected {w[first]})' if first < n else '')
    return at + (f'; {len(g)} indices against {len(w)}' if len(g) != len(w) else '')


def selection_mismatches(fixture_dir:Path|str, # the fixture: run/ and expected/
                         work_dir:Path|str, # an empty folder for the copy of the run and the outputs
                         tau:float|None=None, # run every case with this --tau instead
                         rows:dict|None=None, # {row: (D,) vector}: overwrite these embedding rows (as float16) in the copy
                         cases:list|None=None, # the cases of `CASES` to run (default: all)
                        ) -> list: # one line per output that differs from the committed one; empty if all match byte for byte
    "Run `coincide select` on a copy of the fixture's run folder and compare each output file with the committed one."
    fixture, work = Path(fixture_dir), Path(work_dir)
    run = work/'run'; run.mkdir(parents=True)
    for name in RUN_FILES: shutil.copyfile(fixture/'run'/name, run/name)
    if rows:
        x = np.load(run/'embeddings.npy')
        for j, v in rows.items(): x[j] = np.asarray(v, np.float64).astype(x.dtype)
        np.save(run/'embeddings.npy', x)
    out = []
    for case in cases or list(CASES):
        args, files = CASES[case]
        rc, err = run_select(run, work/case, args + (['--tau', repr(float(tau))] if tau is not None else []))
        if rc != 0: out.append(f'{case}: coincide select exited with {rc}: {err.strip()}'); continue
        for f in files:
            got, want = work/case/f, fixture/'expected'/case/f
            if not got.is_file(): out.append(f'{case}/{f}: not written')
            elif got.read_bytes() != want.read_bytes(): out.append(f'{case}/{f}: {_difference(got, want)}')
    return out


# Margins: everything the selection decides by comparing or rounding floats, recomputed in float64.

def _rel_gaps(v:np.ndarray) -> float:
    "Smallest gap between distinct sorted values, relative to the largest magnitude."
    v = np.sort(np.asarray(v, np.float64))
    return float(np.diff(v).min() / max(np.abs(v).max(), 1e-300)) if len(v) > 1 else np.inf


def _allocation_margin(S:np.ndarray, D:np.ndarray, sizes:np.ndarray, budget:int, tau:float, exact:bool) -> float:
    "Smallest distance of the allocation's rounding arguments from a rounding boundary, and of P from a tie."
    score = S / D
    e = np.exp(score / tau); P = e / e.sum()
    visit = np.argsort(-P, kind='stable')
    margins, taken, remaining = [_rel_gaps(P)], np.zeros(len(P), np.int64), budget
    for i, j in enumerate(visit):
        y = remaining * (e[visit[i:]][0] / e[visit[i:]].sum())              # round(y), half to even
        margins.append(abs(abs(y - np.floor(y)) - 0.5))
        taken[j] = min(int(round(y)), sizes[j]); remaining -= taken[j]
    room, left = sizes - taken, remaining
    while exact and left > 0:                                                # `top_up`'s floors
        act = visit[room[visit] > 0]
        y = left * P[act] / P[act].sum()
        margins.append(np.abs(y - np.round(y)).min())
        give = np.minimum(np.floor(y).astype(np.int64), room[act])
        give = np.clip(left - (np.cumsum(give) - give), 0, give)
        if give.sum() == 0: give[:min(left, len(act))] = 1
        room[act] -= give; left -= int(give.sum())
    return float(min(margins))


def _transfer_margin(cen:np.ndarray, layout:dict) -> float:
    "Distance of the text-part cosines from the 0.9 threshold, and smallest gap in each row's neighbour order."
    from naive_coincide import text_columns
    t = unit(cen.astype(np.float64)[:, text_columns(layout, cen.shape[1])])
    C = t @ t.T
    off = C[~np.eye(len(C), dtype=bool)].reshape(len(C), -1)
    return float(min(np.abs(off - 0.9).min(), min(_rel_gaps(r) for r in off)))


def check_fixture(folder:Path):
    "Raise unless every case's selection is decided by a margin, paper mode equals the naive one, and tau 0.11 and a row change show."
    from naive_coincide import load_run, naive_greedy, naive_kernel, naive_select
    emb, layout, cen, a = load_run(folder/'run')
    margins = {'transferability': _transfer_margin(cen, layout)}
    for case, (args, files) in CASES.items():
        sigma = float(args[args.index('--sigma') + 1]) if '--sigma' in args else 1.0
        for f in files:
            out = folder/'expected'/case/Path(f).parent
            man, idx = json.loads((out/'manifest.json').read_text()), np.load(out/'indices.npy')
            table = np.genfromtxt(out/'clusters.csv', delimiter=',', names=True)
            sizes = table['size'].astype(np.int64)
            margins[f'{case}/{f} allocation'] = _allocation_margin(table['S'], table['D'], sizes, man['counts']['budget'],
                                                                   man['params']['tau'], man['params']['mode'] == 'exact')
            for c, m, size in zip(table['cluster'].astype(int), table['taken'].astype(int), sizes):
                if not 0 < m < size: continue
                mem = np.flatnonzero(a == c)
                picks, gap = naive_greedy(naive_kernel(emb[mem], sigma), m)
                if not set(mem[picks]) <= set(idx): raise ValueError(f'{case}/{f}: cluster {c}: the naive greedy picks other records')
                margins[f'{case}/{f} greedy cluster {c}'] = gap
    low = {k: v for k, v in margins.items() if not v > MARGIN}
    if low: raise ValueError(f'near-ties that rounding could flip: {low}')
    want, _, _ = naive_select(emb, layout, cen, a, 0.3, 0.1)
    if not np.array_equal(want, np.load(folder/'expected'/'paper-0.3'/'indices.npy')): raise ValueError('paper mode differs from the naive one')
    with tempfile.TemporaryDirectory() as tmp:
        if len(selection_mismatches(folder, Path(tmp)/'tau', tau=0.11, cases=['paper-0.3', 'exact-0.3'])) < 2:
            raise ValueError('tau 0.11 does not change both the paper and the exact selection')
    return min(margins.items(), key=lambda kv: kv[1])


def write_fixture(folder:Path=FIXTURE, seed:int=SEED) -> Path:
    "Write the run folder and the expected outputs of every case, check them (`check_fixture`), then replace `folder`."
    with tempfile.TemporaryDirectory() as tmp:
        new = Path(tmp)/'fixture'
        run = make_run(new/'run', seed)
        for case, (args, files) in CASES.items():
            rc, err = run_select(run, Path(tmp)/'out'/case, args)
            if rc != 0: raise RuntimeError(f'{case}: coincide select exited with {rc}: {err}')
            for f in files:
                for name in ('indices.npy', 'manifest.json', 'clusters.csv'):
                    src, dst = Path(tmp)/'out'/case/Path(f).parent/name, new/'expected'/case/Path(f).parent/name
                    dst.parent.mkdir(parents=True, exist_ok=True); shutil.copyfile(src, dst)
        margin = check_fixture(new)
        for case in CASES:                 # the manifests and tables served the checks; only the indices are committed
            for p in (new/'expected'/case).rglob('*'):
                if p.name in ('manifest.json', 'clusters.csv'): p.unlink()
        if folder.exists(): shutil.rmtree(folder)
        shutil.copytree(new, folder)
    print(f'wrote {folder}; the smallest margin, {margin[1]:.1e}: {margin[0]}')
    return folder


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--write', action='store_true', help='regenerate the fixture and its expected indices')
    p.add_argument('--seed', type=int, default=SEED)
    args = p.parse_args()
    if not args.write: p.error('nothing to do: pass --write')
    write_fixture(FIXTURE, args.seed)
