"""`coincide baseline` driven as a user would: a tiny random LLaVA and CLIP built offline, one reference pass
cached in RUN/scores, every baseline returning exactly the budget, and bad input answered with exit 2."""
import json
from collections import Counter
from pathlib import Path
import numpy as np
import pytest
import torch
from PIL import Image

from coincide.baselines import BASELINES, save_scores, scores_path, compute_reference_scores
from coincide.testbed.models import tiny_clip
from coincide.testbed.models import train_tokenizer, record_texts, build_processor, build_tiny_llava

COLOURS = ['red', 'green', 'blue', 'yellow', 'white', 'black']
SOURCES = ['coco', 'gqa', 'vg']


def turn(who, text): return {'from': who, 'value': text}


def make_records():
    "36 records: 30 with an image under coco/, gqa/ or vg/ (10 each), 6 text-only."
    recs = []
    for i in range(30):
        c, src = COLOURS[i % 6], SOURCES[i % 3]
        conv = [turn('human', '<image>\nWhat colour is this?'), turn('gpt', f'It is {c}.')]
        if i % 4 == 0: conv += [turn('human', 'Are you sure?'), turn('gpt', 'yes')]
        recs.append({'id': f'r{i}', 'image': f'{src}/{c}.png', 'conversations': conv})
    recs += [{'id': f't{i}', 'conversations': [turn('human', f'Count to {i + 1}.'), turn('gpt', ' '.join(map(str, range(1, i + 2))))]}
             for i in range(6)]
    return recs


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp('baselines')
    images = root/'images'
    for src in SOURCES:
        (images/src).mkdir(parents=True)
        for c in COLOURS: Image.new('RGB', (20, 18), c).save(images/src/f'{c}.png')
    recs = make_records()
    data = root/'train.json'; data.write_text(json.dumps(recs))
    tok = train_tokenizer(record_texts(recs * 3))
    model, proc = build_tiny_llava('test', tok, seed=1), build_processor(tok)
    model.save_pretrained(root/'llava'); proc.save_pretrained(root/'llava')
    clip, cproc = tiny_clip(tok, seed=2)
    clip.save_pretrained(root/'clip'); cproc.save_pretrained(root/'clip')
    return {'root': root, 'images': images, 'data': data, 'records': recs, 'llava': root/'llava', 'clip': root/'clip',
            'model': model, 'processor': proc}


@pytest.fixture(scope='module')
def scored(world, tmp_path_factory):
    "A run folder whose reference scores were computed by the CLI's --model route."
    from coincide.cli import main
    run = tmp_path_factory.mktemp('run')
    rc = main(['baseline', 'el2n', str(run), '--fraction', '0.25', '--data', str(world['data']), '--images', str(world['images']),
               '--model', str(world['llava']), '--batch-size', '4', '--out', str(run/'el2n')])
    assert rc == 0
    return run


def indices(out): return np.load(Path(out)/'indices.npy')


@pytest.fixture
def coincide(capsys):
    "Run `coincide ARGS...` in this process (much faster than a subprocess); returns (status, stdout, stderr)."
    from coincide.cli import main
    def run(*args):
        try: rc = main([str(a) for a in args])
        except SystemExit as e: rc = e.code
        out, err = capsys.readouterr()
        return rc, out, err
    return run


def test_help_lists_every_baseline(cli):
    res = cli('baseline', '--help')
    assert res.returncode == 0
    for name in BASELINES: assert f'\n  {name} ' in res.stdout, name


@pytest.mark.parametrize('args, message', [
    (['nope', 'RUN', '--fraction', '0.2'], "invalid choice: 'nope'"),
    (['random', 'RUN', '--fraction', '0'], 'outside (0, 1]'),
    (['random', 'RUN', '--fraction', '1.5'], 'outside (0, 1]'),
    (['random', 'RUN', '--fraction', '-0.1'], 'outside (0, 1]'),
    (['el2n', 'RUN', '--fraction', '0.2'], '--model MODEL_DIR'),
    (['perplexity', 'RUN', '--fraction', '0.2'], 'one pass writes el2n, perplexity'),
    (['clip-score', 'RUN', '--fraction', '0.2'], '--clip CLIP_DIR'),
    (['self-filter', 'RUN', '--fraction', '0.2'], 'train_self_filter'),
    (['semdedup', 'RUN', '--fraction', '0.2'], 'emb_last'),
    (['random', 'RUN', '--fraction', '0.2', '--stratify', 'task', '--data', 'DATA'], "has no 'task'"),
    (['random', 'MISSING', '--fraction', '0.2'], 'run folder not found'),
])
def test_bad_input_exits_2_with_a_message(coincide, tmp_path, world, args, message):
    run = tmp_path/'run'; run.mkdir(); save_scores(run, 'other', np.zeros(36, np.float32), {})
    args = [str(run) if a == 'RUN' else str(world['data']) if a == 'DATA' else str(tmp_path/'missing') if a == 'MISSING' else a for a in args]
    rc, _, err = coincide('baseline', *args)
    assert rc == 2, err
    assert message in err


@pytest.mark.parametrize('args, message', [(['nope', '--fraction', '0.2'], "invalid choice: 'nope'"),
                                           (['random', '--fraction', '2'], 'outside (0, 1]'),
                                           (['el2n', '--fraction', '0.2'], '--model MODEL_DIR')])
def test_bad_input_from_the_shell(cli, tmp_path, args, message):
    run = tmp_path/'run'; save_scores(run, 'other', np.zeros(36, np.float32), {})
    res = cli('baseline', args[0], run, *args[1:])
    assert res.returncode == 2 and message in res.stderr
    assert 'Traceback' not in res.stderr


def test_scores_of_other_records_are_refused(coincide, tmp_path, world):
    run = tmp_path/'run'; save_scores(run, 'el2n', np.arange(10, dtype=np.float32), {})
    rc, _, err = coincide('baseline', 'el2n', run, '--fraction', '0.5', '--data', world['data'])
    assert rc == 2 and 'has 10 rows but there are 36 records' in err


def test_reference_pass_writes_every_score_with_a_manifest(scored):
    for name, shape in [('el2n', (36,)), ('perplexity', (36,)), ('margin', (36,)), ('emb_last', (36, 32)), ('emb_mean', (36, 32))]:
        arr = np.load(scores_path(scored, name))
        assert arr.shape == shape and np.isfinite(arr).all()
        man = json.loads(scores_path(scored, name).with_suffix('.manifest.json').read_text())
        assert man['params']['prompt'] == 'llava_v1' and man['inputs']['data']['sha256']
    ppl, el2n, margin = (np.load(scores_path(scored, n)) for n in ('perplexity', 'el2n', 'margin'))
    assert (ppl > 1).all() and (el2n >= 0).all() and (el2n <= 2 ** 0.5).all() and (np.abs(margin) <= 1).all()


def independent_scores(model, proc, rec, images):
    "EL2N and perplexity of a one-turn record by another route: labels = every token after the prompt."
    q, a = rec['conversations'][0]['value'], rec['conversations'][1]['value']
    img = [Image.open(images/rec['image']).convert('RGB')] if rec.get('image') else None
    prompt = f'<s>USER: {q} ASSISTANT:'
    full = proc(text=[f'{prompt} {a}</s>'], images=img, return_tensors='pt')
    start = proc(text=[prompt], images=img, return_tensors='pt')['input_ids'].shape[1]
    with torch.no_grad(): logits = model(**full).logits[0]                       # (T, V)
    tgt = full['input_ids'][0, start:]
    lg = logits[start - 1:-1]
    ppl = torch.nn.functional.cross_entropy(lg, tgt).exp().item()
    el2n = (lg.softmax(-1) - torch.nn.functional.one_hot(tgt, lg.shape[1])).norm(dim=1).mean().item()
    return el2n, ppl


def test_el2n_and_perplexity_match_an_independent_computation(scored, world):
    el2n, ppl = np.load(scores_path(scored, 'el2n')), np.load(scores_path(scored, 'perplexity'))
    for i in [1, 2, 5, 30, 33]:                                                  # one-turn records, with and without image
        assert len(world['records'][i]['conversations']) == 2
        e, p = independent_scores(world['model'], world['processor'], world['records'][i], world['images'])
        assert abs(el2n[i] - e) < 1e-4 and abs(ppl[i] - p) < 1e-3 * p, (i, el2n[i], e, ppl[i], p)


def test_el2n_selection_is_the_top_of_the_cached_ranking(scored, world):
    el2n = np.load(scores_path(scored, 'el2n'))
    sel = indices(scored/'el2n')
    assert len(sel) == 9                                                          # floor(0.25 * 36)
    assert el2n[sel].min() >= np.sort(el2n)[-9]
    subset = json.loads((scored/'el2n'/'subset.json').read_text())
    assert [r['id'] for r in subset] == [world['records'][i]['id'] for i in sel]
    man = json.loads((scored/'el2n'/'manifest.json').read_text())
    assert man['params']['keep'] == 'top' and man['params']['budget'] == 9 and 'el2n' in man['inputs']


def test_scores_are_reused_across_fractions_and_baselines(coincide, scored, world):
    before = {p.name: p.stat().st_mtime_ns for p in (scored/'scores').glob('*.npy')}
    for frac, keep in [('0.5', 'middle'), ('0.1', 'bottom')]:
        rc, _, err = coincide('baseline', 'perplexity', scored, '--fraction', frac, '--keep', keep, '--data', world['data'],
                  '--model', world['llava'], '--out', scored/f'ppl{frac}')
        assert rc == 0, err
    assert {p.name: p.stat().st_mtime_ns for p in (scored/'scores').glob('*.npy')} == before
    ppl = np.load(scores_path(scored, 'perplexity'))
    order = np.argsort(ppl, kind='stable')
    assert set(indices(scored/'ppl0.5')) == set(order[9:27])                      # the centred 18 of 36
    assert set(indices(scored/'ppl0.1')) == set(order[:3])


@pytest.mark.parametrize('name, extra', [('semdedup', ['--clusters', '3']), ('d2-pruning', []), ('self-sup', ['--clusters', '3']),
                                         ('random', []), ('random', ['--stratify', 'source'])])
def test_every_baseline_returns_the_budget_deterministically(coincide, scored, world, name, extra):
    outs = []
    for rep in range(2):
        out = scored/f'{name}{"".join(extra)}-{rep}'
        rc, _, err = coincide('baseline', name, scored, '--fraction', '0.3', '--data', world['data'], '--seed', '7', '--out', out, *extra)
        assert rc == 0, err
        outs.append((out/'indices.npy').read_bytes())
        assert len(indices(out)) == 10                                            # floor(0.3 * 36)
    assert outs[0] == outs[1]


def test_semdedup_and_self_sup_share_one_cached_clustering(coincide, scored):
    stamps = []
    for name in ('semdedup', 'self-sup', 'semdedup'):
        rc, _, err = coincide('baseline', name, scored, '--fraction', '0.5', '--clusters', '2', '--out', scored/f'share-{name}')
        assert rc == 0, err
        stamps.append(scores_path(scored, 'kmeans_emb_last').stat().st_mtime_ns)
    assert len(set(stamps)) == 1                                                  # k-means ran once
    man = json.loads(scores_path(scored, 'kmeans_emb_last').with_suffix('.manifest.json').read_text())
    assert man['params']['n_clusters'] == 2 and man['params']['embedding'] == 'emb_last'


def test_stratified_random_keeps_the_source_proportions(coincide, scored, world):
    rc, _, err = coincide('baseline', 'random', scored, '--fraction', '0.5', '--stratify', 'source', '--data', world['data'], '--out', scored/'strat')
    assert rc == 0, err
    subset = json.loads((scored/'strat'/'subset.json').read_text())
    counts = Counter('text' if r.get('image') is None else r['image'].split('/')[0] for r in subset)
    assert counts == {'coco': 5, 'gqa': 5, 'vg': 5, 'text': 3}
    orc, _, _ = coincide('baseline', 'random', scored, '--fraction', '0.5', '--stratify', 'source', '--data', world['data'], '--seed', '1', '--out', scored/'strat1')
    assert orc == 0 and not np.array_equal(indices(scored/'strat'), indices(scored/'strat1'))


def test_self_filter_reads_its_cached_difficulties(coincide, scored, world):
    d = np.zeros(36, np.float32); d[[3, 4, 20]] = 5
    save_scores(scored, 'self_filter', d, {'planted': True})
    rc, _, err = coincide('baseline', 'self-filter', scored, '--fraction', '0.1', '--out', scored/'sf')
    assert rc == 0, err
    assert indices(scored/'sf').tolist() == [3, 4, 20]


def test_self_filter_stage_one_from_the_cli(coincide, tmp_path, world):
    run = tmp_path/'run'; run.mkdir()
    args = ['baseline', 'self-filter', run, '--fraction', '0.25', '--data', world['data'], '--images', world['images'],
            '--model', world['llava'], '--epochs', '1', '--batch-size', '6']
    rc, _, err = coincide(*args, '--out', run/'a')
    assert rc == 0, err
    d = np.load(scores_path(run, 'self_filter'))
    assert d.shape == (36,) and np.isfinite(d).all() and d.std() > 0
    man = json.loads(scores_path(run, 'self_filter').with_suffix('.manifest.json').read_text())
    assert man['params']['epochs'] == 1 and man['params']['features'] == 'emb_mean'
    stamp = scores_path(run, 'self_filter').stat().st_mtime_ns
    rc, _, err = coincide(*args, '--out', run/'b')
    assert rc == 0 and scores_path(run, 'self_filter').stat().st_mtime_ns == stamp            # stage 1 ran once
    assert len(indices(run/'a')) == 9 and np.array_equal(indices(run/'a'), indices(run/'b'))


def test_clip_score_computed_once_then_ranked(coincide, tmp_path, world):
    run = tmp_path/'run'; run.mkdir()
    rc, _, err = coincide('baseline', 'clip-score', run, '--fraction', '0.25', '--data', world['data'], '--images', world['images'],
              '--clip', world['clip'], '--keep', 'bottom', '--out', run/'cs')
    assert rc == 0, err
    s = np.load(scores_path(run, 'clip_score'))
    assert s.shape == (36,) and (np.abs(s) <= 1 + 1e-6).all()
    assert np.allclose(s[30:], np.median(s[:30]))                                  # text-only records: the median
    assert set(indices(run/'cs')) == set(np.lexsort((np.arange(36), s))[:9])


@pytest.mark.slow
def test_a_model_trained_on_some_answers_ranks_them_easy(tmp_path, world):
    "Records whose answers the reference model has learnt (red and green) get the lowest EL2N and perplexity; keep=bottom picks them."
    from coincide.baselines import run_baseline
    from coincide.model_scores import record_batch
    proc = world['processor']; model = build_tiny_llava('test', proc.tokenizer, seed=3)
    recs = world['records']; learnt = [i for i in range(30) if i % 6 in (0, 1)]          # 10 records: red, green
    torch.manual_seed(0); opt = torch.optim.AdamW(model.parameters(), lr=3e-3); model.train()
    batch = record_batch(recs, learnt, proc, world['images'])
    for _ in range(60):
        loss = model(**batch).loss
        opt.zero_grad(); loss.backward(); opt.step()
    run = tmp_path/'run'
    compute_reference_scores(run, recs, model.eval(), proc, world['images'], batch_size=6)
    for name in ('el2n', 'perplexity'):
        out = run_baseline(name, run, 0.28, out=run/name, keep='bottom')                  # floor(0.28 * 36) = 10
        assert set(indices(out)) == set(learnt), name


def planted_run(root, n=40):
    "A run folder of `n` records without a model: embeddings.npy, el2n and unit-norm emb_last planted."
    run = root/'run'; (run/'scores').mkdir(parents=True); g = np.random.default_rng(0)
    np.save(run/'embeddings.npy', np.ones((n, 4), np.float32))
    save_scores(run, 'el2n', g.random(n).astype(np.float32), {'planted': True})
    emb = g.standard_normal((n, 8)).astype(np.float32)
    save_scores(run, 'emb_last', emb / np.linalg.norm(emb, axis=1, keepdims=True), {'planted': True})
    return run


def write_records(root, recs):
    "The records as a LLaVA JSON file recs.json under `root`."
    (root/'recs.json').write_text(json.dumps(recs)); return root/'recs.json'


RECS = make_records() + make_records()[:4]                                         # 40 records, one per row of `planted_run`


@pytest.mark.parametrize('spoil, args, messages', [
    (lambda run, root: write_records(root, RECS[:39]), ['random', '--fraction', '0.2', '--data', 'DATA'],
     ['recs.json: 39 records but', 'embeddings.npy has 40 rows', 'pass the records the run was extracted from']),
    (lambda run, root: write_records(root, RECS[:5] + [7] + RECS[6:]), ['random', '--fraction', '0.2', '--data', 'DATA', '--stratify', 'source'],
     ['recs.json: record 5 is int 7, not a JSON object']),
    (lambda run, root: save_scores(run, 'el2n', np.zeros((40, 3), np.float32), {}), ['el2n', '--fraction', '0.2'],
     ['el2n.npy: expected one score per record (shape (40,)), found (40, 3); delete it and compute it again']),
    (None, ['self-sup', '--fraction', '0.5', '--clusters', '1000'], ['--clusters 1000 is larger than the number of records (40)']),
    (None, ['semdedup', '--fraction', '0.5', '--clusters', '-3'], ['--clusters -3: the number of k-means clusters must be a positive integer']),
    (None, ['self-sup', '--fraction', '0.5', '--clusters', '0'], ['--clusters 0: the number of k-means clusters must be a positive integer']),
    (lambda run, root: save_scores(run, 'emb_last', np.ones(40, np.float32), {}), ['semdedup', '--fraction', '0.5'],
     ['emb_last.npy: expected one embedding row per record (shape (40, H)), found (40,)', 'coincide baseline semdedup RUN']),
    (lambda run, root: save_scores(run, 'emb_last', np.zeros((40, 8), np.float32), {}), ['self-sup', '--fraction', '0.5'],
     ['emb_last.npy: record 0 has an all-zero embedding', '--model MODEL_DIR']),
], ids=['records-vs-embeddings', 'record-not-object', 'score-2d', 'clusters-too-many', 'clusters-negative', 'clusters-zero',
        'emb-last-1d', 'emb-last-zero'])
def test_inconsistent_input_is_refused(cli_in_process, tmp_path, spoil, args, messages):
    run = planted_run(tmp_path)
    if spoil: spoil(run, tmp_path)
    res = cli_in_process('baseline', args[0], run, *[str(tmp_path/'recs.json') if a == 'DATA' else a for a in args[1:]], '--out', tmp_path/'out')
    assert res.returncode == 2, res.stderr
    for m in messages: assert m in res.stderr, res.stderr
    assert 'Traceback' not in res.stderr and not (tmp_path/'out').exists()


@pytest.mark.parametrize('name', ['self-sup', 'semdedup'])
def test_a_corrupt_kmeans_manifest_is_a_cache_miss(cli_in_process, tmp_path, name):
    "A manifest cut short (as by a crash mid-write) is treated as a stale cache: k-means runs again and rewrites it."
    run = planted_run(tmp_path)
    man = scores_path(run, 'kmeans_emb_last').with_suffix('.manifest.json')
    np.save(scores_path(run, 'kmeans_emb_last'), np.zeros((40, 2))); man.write_text('{"params": ')
    res = cli_in_process('baseline', name, run, '--fraction', '0.5', '--out', tmp_path/'out')
    assert res.returncode == 0, res.stderr
    assert f'{man}: not a readable manifest' in res.stderr and 'Traceback' not in res.stderr
    assert json.loads(man.read_text())['params']['n_clusters'] == 1 and len(indices(tmp_path/'out')) == 20
