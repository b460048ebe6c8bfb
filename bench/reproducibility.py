"""Whether portable kernels make the demo's whole chain independent of the CPU choices its libraries make (run by hand).

torch's ATen, MKL, oneDNN, numpy's own SIMD loops, the OpenBLAS bundled with numpy, scipy and faiss, and faiss' own SIMD
code each pick a code path (AVX-512, AVX2, ...) and a thread count from the machine. `coincide demo` pins the ones its
floats go through (`coincide.testbed.portable`: ATen on AVX2, MKL on its reproducible AVX2 path, oneDNN off, one torch
thread, k-means on torch). This probe checks that claim on one machine by pushing every library's choice elsewhere and
asking whether any output byte moves. It runs the demo's whole chain (`coincide demo [--quick] --out DIR --device cpu`:
benchmark, reference model, extraction, k-means, COINCIDE and every baseline with their scores, the pretrained target,
every target training, results.csv), each run in a fresh process on an empty cache:

- `portable`: portable mode, every other choice left to the libraries;
- `portable-pushed`: portable mode with every library's own choice pushed to AVX2 (`PUSHED`);
- `portable-threads2`: portable mode with the thread variables at 2 instead of 1 (`THREADS2`);
- with `--with-native`: `native` (`--native-kernels`) and `native-pushed` (`--native-kernels` and `PUSHED`), which show
  that without portable mode the bytes do move.

Every run sets the thread variables to 1 (the demo's own torch thread count) unless it says otherwise, and inherits no
kernel variable from the caller. For each run a probe process with that run's environment records what each library
reports as its kernel (ATen's capability, MKL's code path from `MKL_VERBOSE`, oneDNN's ISA from `ONEDNN_VERBOSE`, numpy's
enabled dispatch targets, each OpenBLAS' core type and threads from threadpoolctl, faiss' SIMD level). A run that pushes
something counts only if some library it pushes reports other kernels than the run it is compared with (on a CPU
without AVX-512 the AVX2 push changes nothing, and the script says so). Then, per stage of the demo's manifest, the sha256 of each output
file (stage folders without their manifests; the target trainings' accuracies from done.json; results.csv and
results_per_seed.csv without the timing column `select_seconds`) against `portable` (and `native-pushed` against
`native`), with a one-line reason for a stage that differs.

    python bench/reproducibility.py [--with-native] [--out bench/results/reproducibility.json]
    python bench/reproducibility.py --quick --out /tmp/reproducibility_quick.json   # a few minutes a run

writes OUT (JSON: command, versions, CPU, runs with their environment, kernels, wall time and each stage's time, per-stage identity) and a
summary table next to it (OUT with the suffix .md). One machine's kernel paths stand in for other machines: another
machine can also differ in library versions, which this probe does not vary.
"""
import argparse, csv, hashlib, io, json, os, platform, re, shutil, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
THREAD_VARS = ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS')
THREADS1 = {v: '1' for v in THREAD_VARS} # every run's thread variables unless the run sets them
THREADS2 = {v: '2' for v in THREAD_VARS} # `portable-threads2`'s
PUSHED = {'MKL_ENABLE_INSTRUCTIONS': 'AVX2',                         # MKL's dispatch
          'ONEDNN_MAX_CPU_ISA': 'AVX2',                              # oneDNN's JIT
          'NPY_DISABLE_CPU_FEATURES': 'X86_V4 AVX512_ICL AVX512_SPR', # numpy's AVX-512 dispatch targets
          'OPENBLAS_CORETYPE': 'Haswell',                            # the OpenBLAS of numpy, scipy and faiss
          'FAISS_SIMD_LEVEL': 'AVX2'}                                # faiss' own SIMD code
KERNEL_VARS = ('ATEN_CPU_CAPABILITY', 'MKL_CBWR', 'MKL_VERBOSE', 'ONEDNN_VERBOSE', 'DNNL_VERBOSE', 'DNNL_MAX_CPU_ISA',
               'MKL_DYNAMIC', 'OMP_DYNAMIC', *PUSHED, *THREAD_VARS) # never inherited from the caller
# name -> portable mode, its own environment, the run it is compared with besides `portable`, and the reports of which
# one at least must differ from that run's for the comparison to count
RUNS = {'portable': {'portable': True, 'env': {}, 'against': None, 'switches': ()},
        'portable-pushed': {'portable': True, 'env': PUSHED, 'against': 'portable', 'switches': ('mkl', 'onednn', 'numpy', 'openblas', 'faiss')},
        'portable-threads2': {'portable': True, 'env': THREADS2, 'against': 'portable', 'switches': ('threads',)},
        'native': {'portable': False, 'env': {}, 'against': 'portable', 'switches': ('aten',)},
        'native-pushed': {'portable': False, 'env': PUSHED, 'against': 'native', 'switches': ('mkl', 'onednn', 'numpy', 'openblas', 'faiss')}}
NATIVE_RUNS = ('native', 'native-pushed')
TIMING_COLUMNS = ('select_seconds',) # result-table columns that hold wall times
RESULT_KEYS = ('accuracy',) # done.json result entries that are outputs (the rest are times and process states)


def sha256(data:bytes) -> str:
    "The sha256 of `data`, in hex."
    return hashlib.sha256(data).hexdigest()


def run_env(name:str, # a run of `RUNS`
            base:dict, # the caller's environment
           ) -> dict: # the run's environment
    "The caller's environment without kernel or thread variables, with one thread and the run's own variables."
    return {k: v for k, v in base.items() if k not in KERNEL_VARS} | THREADS1 | RUNS[name]['env']


# --- what each library reports --------------------------------------------------------------------------------------

def probe(portable:bool, # portable mode as `coincide demo` sets it up
         ) -> dict: # library -> what it reports (see `parse_verbose` for MKL and oneDNN)
    "The kernels each library reports in this process (run with MKL_VERBOSE=1 ONEDNN_VERBOSE=1 to see MKL and oneDNN)."
    from coincide.testbed.portable import prepare_environment, use_portable_kernels
    if portable: prepare_environment('cpu')                               # as the CLI does, before torch loads
    import warnings, torch, faiss, scipy.linalg, sklearn.cluster          # noqa: F401 (load every BLAS the demo loads)
    from threadpoolctl import threadpool_info
    try: from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError: from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    torch_threads = torch.get_num_threads()
    state = use_portable_kernels('cpu', portable)
    a = torch.randn(64, 64); a @ a                                        # one MKL sgemm: MKL_VERBOSE names its path
    with warnings.catch_warnings(), torch.backends.mkldnn.flags(enabled=True):   # oneDNN's ISA, were it on
        warnings.simplefilter('ignore')
        torch.nn.functional.conv2d(torch.randn(2, 16, 32, 32), torch.randn(32, 16, 3, 3))
    blas = [i for i in threadpool_info() if i['internal_api'] in ('openblas', 'openmp')]
    def lib(i): return f"{i['prefix']} ({Path(i['filepath']).parent.name})"
    return {'aten': torch.backends.cpu.get_cpu_capability(), 'onednn_enabled': state['onednn'], 'mkl_cbwr': state['mkl_cbwr'],
            'mode': state['mode'], 'numpy': [f for f in __cpu_dispatch__ if __cpu_features__.get(f)],
            'openblas': {lib(i): i.get('architecture') for i in blas if i['internal_api'] == 'openblas'},
            'faiss': faiss.SIMDConfig.get_level_name(),
            'threads': {'torch': torch_threads, **{lib(i): i['num_threads'] for i in blas}}}


def parse_verbose(text:str, # a process's output with MKL_VERBOSE=1 and ONEDNN_VERBOSE=1
                 ) -> dict: # {'mkl': {'isa', 'cnr', 'threads'} or None, 'onednn': ISA or None}
    "MKL's code path (its banner's instruction set, its CNR mode, its threads) and oneDNN's ISA from their verbose output."
    banner = re.search(r'MKL_VERBOSE oneMKL.*?architecture (.*?)(?:, Lnx|$)', text, re.M)
    call = re.search(r'MKL_VERBOSE \w+\(.*CNR:(\S+).*NThr:(\d+)', text)
    isa = re.search(r'(?:onednn|dnnl)_verbose,(?:v\d+,)?info,cpu,isa:(.*)', text)
    mkl = None if banner is None else {'isa': (re.search(r'\(Intel\(R\) ([^)]+)\)', banner[1]) or banner)[1],
                                       'cnr': call[1] if call else None, 'threads': int(call[2]) if call else None}
    return {'mkl': mkl, 'onednn': isa[1].strip() if isa else None}


def kernels(name:str, # a run of `RUNS`
            base:dict, # the caller's environment
           ) -> dict: # what each library reports in a fresh process with the run's environment
    "Probe the libraries' kernels in a fresh process with run `name`'s environment."
    env = run_env(name, base) | {'MKL_VERBOSE': '1', 'ONEDNN_VERBOSE': '1'}
    with tempfile.TemporaryDirectory() as d:
        out = Path(d)/'kernels.json'
        res = subprocess.run([sys.executable, __file__, '--probe', 'portable' if RUNS[name]['portable'] else 'native', '--probe-out', str(out)],
                             env=env, capture_output=True, text=True)
        if res.returncode: sys.exit(f"the kernel probe of run {name} failed:\n{res.stderr[-3000:]}")
        rep = json.loads(out.read_text())
    verbose = parse_verbose(res.stdout + res.stderr)
    if verbose['mkl']: rep['threads']['mkl'] = verbose['mkl'].pop('threads')
    return {**rep, **verbose}


def switched(a:dict, b:dict, # two runs' `kernels`
             libraries:tuple, # the reports to compare: 'aten', 'mkl', 'onednn', 'numpy', 'openblas', 'faiss', 'threads'
            ) -> list: # the libraries of `libraries` whose reports differ
    "Which of `libraries` report other kernels in `b` than in `a`."
    return [k for k in libraries if a.get(k) != b.get(k)]


# --- what each stage wrote ------------------------------------------------------------------------------------------

def is_output(path:Path, # a file in a stage folder
             ) -> bool:
    "Whether a stage's file is an output (not its record: done.json and manifests hold paths, times and pids; not a link to another stage)."
    return path.is_file() and not path.is_symlink() and path.name != 'done.json' and not path.name.endswith('manifest.json')


def table_bytes(path:Path, # a CSV results table
               ) -> bytes: # its bytes without the timing columns
    "A results table's bytes without `TIMING_COLUMNS`."
    rows = list(csv.reader(path.read_text().splitlines()))
    keep = [i for i, c in enumerate(rows[0]) if c not in TIMING_COLUMNS] if rows else []
    out = io.StringIO(); csv.writer(out, lineterminator='\n').writerows([r[i] for i in keep] for r in rows)
    return out.getvalue().encode()


def stage_outputs(out:Path, # a demo output folder (manifest.json, results.csv, cache/)
                 ) -> dict: # stage -> {output name: sha256}, in the manifest's order, then 'results'
    "The sha256 of every output of every stage of a demo run."
    keys = json.loads((out/'manifest.json').read_text())['stage_keys']
    stages = {}
    for stage, key in keys.items():
        folder = out/'cache'/key
        files = {p.relative_to(folder).as_posix(): sha256(p.read_bytes()) for p in sorted(folder.rglob('*')) if is_output(p)}
        if (folder/'done.json').is_file():
            result = json.loads((folder/'done.json').read_text())['result']
            files |= {k: sha256(json.dumps(result[k], sort_keys=True).encode()) for k in RESULT_KEYS if k in result}
        stages[stage] = files
    stages['results'] = {n: sha256(table_bytes(out/n)) for n in ('results.csv', 'results_per_seed.csv') if (out/n).is_file()}
    return stages


def stage_record(out:Path, stage:str, # a demo output folder and one of its stages
                ) -> dict: # its done.json ({} for the benchmark and the results)
    "A stage's completion record."
    keys = json.loads((out/'manifest.json').read_text())['stage_keys']
    f = out/'cache'/keys[stage]/'done.json' if stage in keys else None
    return json.loads(f.read_text()) if f and f.is_file() else {}


def _strings(x):
    "Every string inside a JSON value."
    if isinstance(x, str): yield x
    elif isinstance(x, dict):
        for v in x.values(): yield from _strings(v)
    elif isinstance(x, list):
        for v in x: yield from _strings(v)


def upstream(stage:str, # a stage of a run's manifest, or 'results'
             keys:dict, # the run's stage keys
             params:dict, # the stage's parameters (done.json)
            ) -> list: # the stages whose outputs it reads
    "The stages a stage reads: those whose keys its parameters name, a target's selection, every target for the results."
    if stage == 'results': return [s for s in keys if s.startswith('target-')]
    named = set(_strings(params))
    ups = [s for s, k in keys.items() if k in named and s != stage]
    if m := re.fullmatch(r'target-(.+)-(\d+)', stage):                      # a target names its subset by a hash only
        ups += [s for s in (f'select-{m[1]}-{m[2]}', f'select-{m[1]}') if s in keys][:1]
    return ups


def describe(a:Path, b:Path, # the same output file of two runs
            ) -> str:
    "How two versions of an output file differ, in a few words."
    if a.suffix == '.npy':
        x, y = np.load(a), np.load(b)
        if x.shape != y.shape: return f"{a.name}: shape {x.shape} vs {y.shape}"
        if a.name == 'indices.npy':
            return f"{a.name}: {len(np.intersect1d(x, y))} of {len(x)} indices in common"
        if np.issubdtype(x.dtype, np.floating):
            d = np.abs(x.astype(np.float64) - y.astype(np.float64))
            return f"{a.name}: {int((d > 0).sum()):,} of {d.size:,} entries differ, by at most {d.max():.2g}"
        return f"{a.name}: {int((x != y).sum()):,} of {x.size:,} entries differ"
    if a.suffix == '.safetensors':
        from safetensors.numpy import load_file
        x, y = load_file(a), load_file(b)
        d = np.concatenate([np.abs(x[k].astype(np.float64) - y[k].astype(np.float64)).ravel() for k in sorted(x)])
        return f"{a.name}: {int((d > 0).sum()):,} of {d.size:,} weights differ, by at most {d.max():.2g}"
    if a.suffix == '.csv': return describe_table(a, b)
    return f"{a.name}: bytes differ"


def describe_table(a:Path, b:Path, # the same CSV table of two runs
                  ) -> str:
    "Which columns of two versions of a table differ, and by how much where they are numbers."
    ra, rb = (list(csv.reader(p.read_text().splitlines())) for p in (a, b))
    if len(ra) != len(rb) or ra[0] != rb[0]: return f"{a.name}: other rows or columns"
    parts = []
    for j, col in enumerate(ra[0]):
        va, vb = [r[j] for r in ra[1:]], [r[j] for r in rb[1:]]
        if va == vb: continue
        try: parts.append(f"{col} (at most {max(abs(float(x) - float(y)) for x, y in zip(va, vb)):.2g} apart)")
        except ValueError: parts.append(col)
    return f"{a.name} differs in {', '.join(parts)}"


def describe_result(key:str, x, y, # a done.json result entry (`RESULT_KEYS`) of two runs
                   ) -> str:
    "How two runs' accuracies (suite -> accuracy) differ."
    if not (isinstance(x, dict) and isinstance(y, dict)): return f"{key} differs"
    d = {s: abs(x[s] - y.get(s, float('nan'))) for s in x if x[s] != y.get(s)}
    return f"{key} differs on {len(d)} of {len(x)} suites, by up to {max(d.values()):.3g}"


def process_difference(a:dict, b:dict, # two stages' done.json
                      ) -> str: # '' when the processes computed with the same kernels
    "How the kernels of the processes that computed a stage in two runs differ."
    pa, pb = (r.get('result', {}).get('process') or {} for r in (a, b))
    diff = [f"{k} {pa.get(k)} vs {pb.get(k)}" for k in sorted(set(pa) | set(pb)) if k != 'pid' and pa.get(k) != pb.get(k)]
    return f"; computed with {', '.join(diff)}" if diff else ''


def reason(stage:str, # a stage that differs
           a:Path, b:Path, # the two runs' output folders
           hashes_a:dict, hashes_b:dict, # both runs' `stage_outputs`
          ) -> str: # one line
    "Why a stage differs between two runs: an input that differs, or how its outputs differ on the same inputs."
    if hashes_a[stage].keys() != hashes_b[stage].keys():
        only = sorted(set(hashes_a[stage]) ^ set(hashes_b[stage]))
        return f"other files: {', '.join(only[:4])}"
    rec_a, rec_b = stage_record(a, stage), stage_record(b, stage)
    keys = json.loads((a/'manifest.json').read_text())['stage_keys']
    moved = [s for s in upstream(stage, keys, rec_a.get('params', {})) if s in hashes_b and hashes_a[s] != hashes_b[s]]
    if moved: return f"its input {moved[0]} differs" + (f" (and {len(moved) - 1} more)" if len(moved) > 1 else '')
    name = next(n for n in hashes_a[stage] if hashes_a[stage][n] != hashes_b[stage][n])
    same = [n for n in hashes_a[stage] if hashes_a[stage][n] == hashes_b[stage][n] and n.endswith(('.npy', '.safetensors'))]
    if name in RESULT_KEYS: what = describe_result(name, rec_a['result'][name], rec_b['result'][name])
    elif stage == 'results': what = f"{name} differs"
    else:
        kb = json.loads((b/'manifest.json').read_text())['stage_keys']
        what = describe(a/'cache'/keys[stage]/name, b/'cache'/kb[stage]/name)
    return f"same inputs; {what}{' (' + ', '.join(same) + ' identical)' if same else ''}{process_difference(rec_a, rec_b)}"


def compare_runs(a:Path, b:Path, # two demo output folders
                ) -> dict: # stage -> {'identical': bool, 'reason': one line, for a stage that differs}
    "Per stage of `a`'s chain: whether `b` wrote the same bytes, and why not where it did not."
    ha, hb = stage_outputs(a), stage_outputs(b)
    out = {}
    for stage in ha:
        same = stage in hb and ha[stage] == hb[stage]
        out[stage] = {'identical': same} if same else {'identical': False, 'reason': 'missing' if stage not in hb else reason(stage, a, b, ha, hb)}
    return out


def stage_processes(out:Path, # a demo output folder
                   ) -> dict: # {'parent': state, 'stages': [{'state': state without pid, 'stages': [...]}]}
    "The kernel states the demo's processes computed with (the manifest's parent, each stage's done.json), grouped."
    m = json.loads((out/'manifest.json').read_text())
    groups = {}
    for stage in m['stage_keys']:
        state = stage_record(out, stage).get('result', {}).get('process')
        if state is None: continue
        groups.setdefault(json.dumps({k: v for k, v in state.items() if k != 'pid'}, sort_keys=True), []).append(stage)
    parent = {k: v for k, v in ((m.get('kernels') or {}).get('parent') or {}).items() if k != 'pid'}
    return {'parent': parent, 'stages': [{'state': json.loads(k), 'stages': v} for k, v in groups.items()]}


# --- the runs --------------------------------------------------------------------------------------------------------

def demo_command(name:str, # a run of `RUNS`
                 out:Path, # its output folder
                 quick:bool, # the demo's --quick sizes
                ) -> list: # the command line
    "The `coincide demo` command of a run."
    exe = Path(sys.executable).parent/'coincide'
    return [str(exe if exe.is_file() else 'coincide'), 'demo', *(['--quick'] if quick else []), '--out', str(out), '--device', 'cpu',
            *([] if RUNS[name]['portable'] else ['--native-kernels'])]


def from_output(out:Path, # a finished demo output folder
               ) -> dict: # 'processes' (`stage_processes`) and 'stage_seconds' (stage -> wall seconds, from the demo's manifest)
    "What a run's record takes from its output folder: the kernels its processes used and each stage's time."
    return {'processes': stage_processes(out), 'stage_seconds': json.loads((out/'manifest.json').read_text())['stage_seconds']}


def run(name:str, # a run of `RUNS`
        work:Path, # folder of every run's output
        quick:bool, # the demo's --quick sizes
        reuse:bool, # keep a finished run found in `work` instead of running it again
       ) -> dict: # the run's record
    "Run the demo's chain for run `name` in a fresh process on an empty cache; record its command, environment, kernels and time."
    out, record = work/name, work/f'{name}.json'
    if reuse and record.is_file() and (out/'results.csv').is_file(): return json.loads(record.read_text()) | from_output(out)
    shutil.rmtree(out, ignore_errors=True)
    cmd = demo_command(name, out, quick)
    env = run_env(name, os.environ)
    t = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = round(time.perf_counter() - t, 1)
    (work/f'{name}.log').write_text(res.stdout + '\n' + res.stderr)
    if res.returncode: sys.exit(f"run {name} failed ({' '.join(cmd)}):\n{res.stderr[-3000:]}")
    rec = {'command': ' '.join(['coincide', *cmd[1:]]).replace(str(out), 'OUT'), 'portable': RUNS[name]['portable'],
           'environment': {k: v for k, v in env.items() if k in KERNEL_VARS}, 'seconds': seconds,
           'kernels': kernels(name, os.environ), **from_output(out)}
    record.write_text(json.dumps(rec, indent=1) + '\n')
    return rec


def check(runs:dict, # name -> run record (with 'kernels')
         ) -> dict: # name -> {'against', 'switched', 'counts'}
    "For every run but `portable`: which of the libraries it pushes report other kernels than its comparison run, and whether it counts."
    out = {}
    for name, r in runs.items():
        spec = RUNS[name]
        if not spec['against'] or spec['against'] not in runs: continue
        sw = switched(runs[spec['against']]['kernels'], r['kernels'], spec['switches'])
        out[name] = {'against': spec['against'], 'switched': sw, 'counts': bool(sw)}
    return out


def identity(work:Path, # folder of every run's output
             names:list, # the runs made
            ) -> dict: # run -> against -> stage -> {'identical', 'reason'}
    "Per-stage identity of every run against `portable`, and of `native-pushed` against `native` too."
    out = {}
    for name in names:
        if name == 'portable': continue
        against = ['portable'] + ([RUNS[name]['against']] if RUNS[name]['against'] not in (None, 'portable') else [])
        out[name] = {a: compare_runs(work/a, work/name) for a in against if a in names}
    return out


# --- the report ------------------------------------------------------------------------------------------------------

def kernel_cell(k:dict, # a run's kernels
               ) -> list: # cells: ATen, MKL, oneDNN, numpy, OpenBLAS, faiss, threads
    "A run's kernels as table cells."
    mkl = k.get('mkl') or {}
    blas = sorted(set(k['openblas'].values()))
    top = [f for f in k['numpy'] if f.startswith(('X86_', 'AVX512'))]
    threads = sorted({str(v) for v in k['threads'].values()})
    return [k['aten'], f"{mkl.get('isa')}, CNR {mkl.get('cnr')}", f"{str(k['onednn']).replace('Intel ', '').split(' with ')[0]} ({'on' if k['onednn_enabled'] else 'off'})",
            ' '.join(top) or 'baseline', ' '.join(b or '?' for b in blas), k['faiss'], '/'.join(threads)]


def markdown(report:dict, # the JSON report
            ) -> str:
    "The short summary: kernels per run, then stage x run: identical / differs."
    runs, ident, checks = report['runs'], report['identity'], report['checks']
    lines = [f"# Portable kernels against the libraries' CPU choices", '',
             f"`{report['command']}` ({report['cpu']}, {report['cores']} cores; torch {report['versions'].get('torch')}, "
             f"numpy {report['versions'].get('numpy')}, faiss-cpu {report['versions'].get('faiss-cpu')}): the demo's "
             f"whole chain{' at its --quick sizes' if report['quick'] else ''}, each run a fresh `coincide demo` on an empty cache.", '',
             '| run | environment | ATen | MKL | oneDNN (in the demo) | numpy targets | OpenBLAS | faiss | threads | stages computed in | wall time |',
             '|---|---|---|---|---|---|---|---|---|---|---|']
    for name, r in runs.items():
        env = ' '.join(([] if r['portable'] else ['--native-kernels']) + [f'{k}={v}' for k, v in RUNS[name]['env'].items()]) or '-'
        procs = ', '.join(f"{g['state']['mode']} mode ({len(g['stages'])})" for g in r['processes']['stages'])
        lines.append(f"| {name} | {env} | " + ' | '.join(kernel_cell(r['kernels'])) + f" | {procs} | {r['seconds']:.0f} s |")
    lines += ['']
    for name, c in checks.items():
        lines.append(f"- {name} against {c['against']}: " + (f"{', '.join(c['switched'])} report otherwise, so the comparison counts" if c['counts']
                     else "no library it pushes reports otherwise on this CPU: its comparison does not count"))
    cols = [(n, a) for n in ident for a in ident[n]]
    stages = list(next(iter(ident[cols[0][0]].values()))) if cols else []
    lines += ['', '| stage | ' + ' | '.join(n if a == 'portable' else f'{n} vs {a}' for n, a in cols) + ' |',
              '|---|' + '---|' * len(cols)]
    for s in stages:
        lines.append(f'| {s} | ' + ' | '.join('identical' if ident[n][a].get(s, {}).get('identical') else 'differs' for n, a in cols) + ' |')
    reasons = [(n, a, s, v['reason']) for n, a in cols for s, v in ident[n][a].items() if not v['identical']]
    if reasons:
        lines += ['', 'Why a stage differs (first differing input, or how the outputs differ on the same inputs):', '']
        shown = {}
        for n, a, s, why in reasons:
            if not why.startswith('its input'): shown.setdefault((n, a), []).append(f'{s}: {why}')
        for (n, a), items in shown.items(): lines += [f"- {n}{'' if a == 'portable' else ' vs ' + a}: " + '; '.join(items)]
        lines += ['- every other differing stage: one of its inputs differs.']
    return '\n'.join(lines) + '\n'


def versions() -> dict:
    "Python, the platform and the test bed's library versions."
    from coincide.testbed.portable import testbed_versions
    return {'python': platform.python_version(), 'platform': platform.platform(), **testbed_versions()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help="the demo's --quick sizes instead of its default ones")
    p.add_argument('--with-native', action='store_true', help='also the native runs (--native-kernels), to show the bytes moving')
    p.add_argument('--out', default=None, help='the JSON report, the summary next to it as .md (default bench/results/reproducibility.json; '
                                               'required with --quick, whose results are not the committed ones)')
    p.add_argument('--work', default=None, help="keep the runs' output folders here (default: a temporary folder, removed at the end)")
    p.add_argument('--reuse', action='store_true', help='with --work: keep runs already finished there (their records hold their kernels and times)')
    p.add_argument('--probe', choices=('portable', 'native'), help=argparse.SUPPRESS)
    p.add_argument('--probe-out', help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.probe:
        Path(args.probe_out).write_text(json.dumps(probe(args.probe == 'portable'))); return
    if args.quick and not args.out: p.error('--quick needs --out: bench/results/ holds the default-size run')
    names = [n for n in RUNS if args.with_native or n not in NATIVE_RUNS]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix='coincide_repro_'))
    work.mkdir(parents=True, exist_ok=True)
    try:
        runs = {}
        for name in names:
            runs[name] = run(name, work, args.quick, args.reuse)
            print(f"{name:<18} {runs[name]['seconds']:7.1f} s  kernels {kernel_cell(runs[name]['kernels'])}", flush=True)
        ident = identity(work, names)
    finally:
        if not args.work: shutil.rmtree(work, ignore_errors=True)
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    report = {'command': ' '.join(['python', 'bench/reproducibility.py'] + sys.argv[1:]), 'quick': args.quick, 'commit': commit,
              'cpu': next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), platform.processor()),
              'cores': os.cpu_count(), 'versions': versions(), 'pushed': PUSHED, 'threads': {'default': THREADS1, 'portable-threads2': THREADS2},
              'runs': runs, 'checks': check(runs), 'identity': ident}
    out = Path(args.out or ROOT/'bench'/'results'/'reproducibility.json')
    out.write_text(json.dumps(report, indent=1) + '\n')
    out.with_suffix('.md').write_text(markdown(report))
    print(markdown(report))


if __name__ == '__main__':
    main()
