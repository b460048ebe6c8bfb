"""The CPU benchmark: file contract, labels read back from pixels (benchmark_oracle.py), determinism, shares, transfer suites, cache, CLI."""
import json, shutil, time
from collections import Counter
from pathlib import Path
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from sklearn.datasets import load_digits

from coincide.testbed.benchmark import COLOURS, BG, SUITES, make, load_benchmark, load_pretrain, benchmark_meta
from coincide.core import CoincideError
from coincide.data import validate_records
from coincide.testbed.scoring import is_correct
from benchmark_oracle import expected_answers

FIXTURE = Path(__file__).parent.parent/'data'/'fixture'
FIXTURE_CALL = dict(n_train=50, n_eval=2, n_captions=10, seed=0, n_pretrain=20) # the call documented in data/README.md
SMALL = dict(n_train=700, n_eval=25, n_captions=60, seed=3)


@pytest.fixture(scope='module')
def bench(tmp_path_factory):
    return make(tmp_path_factory.mktemp('bench')/'b', **SMALL)


@pytest.fixture(scope='module')
def loaded(bench): return load_benchmark(bench)


def every_record(loaded):
    train, caps, evals = loaded
    return train + caps + [r for rs in evals.values() for r in rs]


def pixels(out, rec): return np.asarray(Image.open(out/rec['image']).convert('RGB'))


def answers(rec): return [t['value'] for t in rec['conversations'] if t['from'] == 'gpt']


def truth(out): return json.loads((out/'truth.json').read_text())


# ---- the file contract ------------------------------------------------------------------------

def test_layout_and_fields(bench, loaded):
    train, caps, evals = loaded
    assert {p.name for p in bench.iterdir()} == {'train.json', 'captions.json', 'pretrain.json', 'eval', 'images', 'truth.json', 'benchmark.json'}
    assert (len(train), len(caps)) == (700, 60)
    assert sorted(evals) == sorted(SUITES) and all(len(rs) == 25 for rs in evals.values())
    assert sorted(p.stem for p in (bench/'eval').glob('*.json')) == sorted(SUITES)
    assert all('source' in r for r in train)
    for r in every_record(loaded):
        assert {'id', 'conversations', 'concept', 'skill', 'object'} <= set(r)
        if 'turn_skills' in r: assert len(r['turn_skills']) == len(r['conversations']) // 2
        if 'image' in r:
            assert r['image'].startswith('images/') and r['image'].endswith('.png')
            assert r['conversations'][0]['value'].startswith('<image>\n')
    assert all(r['skill'] == 'caption' for r in caps)
    for name, rs in evals.items():
        assert all(r['benchmark'] == name for r in rs)
        mc = [r for r in rs if r['skill'] == 'multiple_choice']
        assert all(len(r['choices']) == 4 for r in mc)
    with Image.open(bench/train[0]['image'] if 'image' in train[0] else bench/train[1]['image']) as im:
        assert (im.size, im.mode) == ((32, 32), 'RGB')


def test_every_record_validates(bench, loaded):
    train, caps, evals = loaded
    for name, recs in [('train', train), ('captions', caps), *evals.items()]:
        good, bad = validate_records(recs, bench, decode=True, source=name)
        assert bad == [] and len(good) == len(recs)


def test_short_text_and_answers(loaded):
    for r in every_record(loaded):
        for t in r['conversations']:
            text = t['value'].replace('<image>\n', '')
            longest = 5 if r['skill'] == 'caption' else 3  # a caption of two shapes: 'red circle and blue square'
            assert len(text.split()) < 20 if t['from'] == 'human' else 1 <= len(text.split()) <= longest, (r['id'], text)


def test_eval_answers_in_closed_sets_and_chance(bench, loaded):
    meta = benchmark_meta(bench)
    for name, rs in loaded.evals.items():
        info = meta['suites'][name]
        assert info['chance'] == pytest.approx(0.25 if info['skill'] == 'multiple_choice' else 1 / len(info['answers']))
        assert {answers(r)[-1] for r in rs} <= set(info['answers'])
    assert meta['suites']['shape_recog']['chance'] == pytest.approx(1 / 3) and meta['suites']['digit_choice']['chance'] == 0.25


def test_reference_answers_score_as_correct(loaded):
    for rs in loaded.evals.values():
        for r in rs:
            ref = answers(r)[-1]
            assert is_correct(ref, r) and is_correct(f' {ref.upper()}. ', r) and not is_correct(ref + ' x', r)
            if 'choices' in r:
                letter = 'ABCD'[r['choices'].index(ref)]
                assert is_correct(letter, r) and is_correct(f'{letter}. {ref}', r) and not is_correct('ABCD'[(r['choices'].index(ref) + 1) % 4], r)


# ---- labels agree with the pixels --------------------------------------------------------------

def test_all_labels_read_back_from_pixels(bench, loaded):
    noisy = truth(bench)['noisy_answer']
    checked = n_noisy = 0
    for r in every_record(loaded):
        pairs = [(e, a) for e, a in zip(expected_answers(r, bench), answers(r)) if e is not None]
        if not pairs: continue
        if r['id'] in noisy:
            n_noisy += 1
            assert any(e != a for e, a in pairs), f"{r['id']} is documented noisy but its answer matches the image"
        else:
            checked += 1
            assert all(e == a for e, a in pairs), (r['id'], r['conversations'], pairs)
    assert checked > 0.7 * len(every_record(loaded)) and n_noisy > 0


def blob_count(img):
    "Independent of the library: connected non-background regions."
    fg = np.abs(img.astype(int) - BG).max(-1) > 30
    return ndimage.label(fg, structure=np.ones((3, 3)))[1]


def test_counting_matches_blobs(bench, loaded):
    """Pure counting images hold exactly `answer` shapes of the asked kind plus at most two distractors."""
    noisy = truth(bench)['noisy_answer']
    recs = [r for r in every_record(loaded) if r['skill'] == 'counting' and r['id'] not in noisy]
    assert len(recs) > 50
    for r in recs:
        n, total = int(answers(r)[0]), blob_count(pixels(bench, r))
        assert n <= total <= n + 2, (r['id'], n, total)


def test_digits_equal_sklearn_after_transform(bench, loaded):
    d = load_digits()
    table = {}
    for im, y in zip(d.images, d.target):
        big = np.kron(255 - 15 * im.astype(int), np.ones((4, 4), int)).astype(np.uint8)
        table.setdefault(big.tobytes(), set()).add(str(y))
    tr = truth(bench); skip = set(tr['noisy_answer']) | set(tr['near_duplicate_of'])
    recs = [r for r in every_record(loaded) if r['concept'] == 'digit' and r['skill'] in ('recognition', 'caption') and r['id'] not in skip]
    assert len(recs) > 30
    for r in recs:
        img = pixels(bench, r)
        assert (img[..., 0] == img[..., 1]).all() and (img[..., 0] == img[..., 2]).all()
        assert answers(r)[0].split()[-1] in table[img[..., 0].tobytes()], r['id']


def test_colour_is_dominant_colour(bench, loaded):
    noisy = truth(bench)['noisy_answer']
    recs = [r for r in every_record(loaded) if r['skill'] == 'recognition' and r['concept'] == 'colour' and r['id'] not in noisy]
    assert len(recs) > 20
    for r in recs:
        img = pixels(bench, r).astype(int)
        fg = img[np.abs(img - BG).max(-1) > 30]
        rgb = Counter(map(tuple, fg)).most_common(1)[0][0]
        nearest = min(COLOURS, key=lambda c: sum(abs(a - b) for a, b in zip(COLOURS[c], rgb)))
        assert nearest == answers(r)[0], r['id']


def test_noisy_and_duplicate_shares_documented(bench, loaded):
    meta, tr, train = benchmark_meta(bench), truth(bench), loaded.train
    ids = {r['id'] for r in train}
    assert set(tr['noisy_answer']) <= ids and set(tr['near_duplicate_of']) <= ids
    assert meta['noisy_answer_share'] == pytest.approx(len(tr['noisy_answer']) / len(train))
    assert meta['near_duplicate_share'] == pytest.approx(len(tr['near_duplicate_of']) / len(train))
    assert 0.05 < meta['near_duplicate_share'] < 0.2 and 0.02 < meta['noisy_answer_share'] < 0.1
    by_id = {r['id']: r for r in train}
    for dup, orig in tr['near_duplicate_of'].items():
        a, b = by_id[dup], by_id[orig]
        assert a['image'] != b['image'] and (a['source'], a['skill']) == (b['source'], b['skill'])
        if dup not in tr['noisy_answer'] and orig not in tr['noisy_answer']: assert a['conversations'] == b['conversations']
        diff = np.abs(pixels(bench, a).astype(int) - pixels(bench, b)).mean()
        assert 0 < diff < 40, (dup, orig, diff)
    for rid, right in tr['noisy_answer'].items(): assert answers(by_id[rid])[-1] != right


# ---- mix: sources, text-only, transfer ---------------------------------------------------------

def test_text_only_share_and_skewed_sources(bench, loaded):
    train = loaded.train
    text = [r for r in train if 'image' not in r]
    assert 0.05 <= len(text) / len(train) <= 0.07
    assert all('<image>' not in t['value'] for r in text for t in r['conversations'])
    sizes = Counter(r['source'] for r in train)
    assert len(sizes) >= 6 and max(sizes.values()) >= 5 * min(sizes.values())
    assert {s: v['records'] for s, v in benchmark_meta(bench)['sources'].items()} == dict(sizes)


def test_compositions_are_many_and_long_tailed(bench, loaded):
    comps = benchmark_meta(bench)['compositions']
    assert len(comps) >= 150 and sum(comps.values()) == sum(len(r['conversations']) // 2 for r in loaded.train)
    digits = Counter(r['object'] for r in loaded.train if r['concept'] == 'digit')
    assert digits['digit 0'] >= 4 * digits['digit 9']                                    # Zipf: rank 1 against rank 10
    eval_digits = Counter(r['object'] for r in loaded.evals['digit_recog'])
    assert max(eval_digits.values()) <= 3 * min(eval_digits.values()) + 3               # evaluation is uniform


def test_several_questions_per_image_in_three_sources(loaded):
    multi = Counter(r['source'] for r in loaded.train if 'image' in r and len(r['conversations']) > 2 and r['source'] != 'dialog')
    assert len(multi) >= 3, multi
    r = next(r for r in loaded.train if r.get('turn_skills') and len(set(r['turn_skills'])) > 1)
    assert len(r['conversations']) >= 4


def test_pretraining_pool_is_grounded_and_disjoint(bench, loaded):
    pre = load_pretrain(bench)
    assert len(pre) == SMALL['n_train'] and sum('image' in r for r in pre) > len(pre) // 2
    assert all(r['image'].startswith('images/pretrain/') and (bench/r['image']).is_file() for r in pre if 'image' in r)
    assert not {r['id'] for r in pre} & {r['id'] for r in loaded.train}
    pairs = [(a, b) for a, b in zip(pre, loaded.train) if 'image' in a and 'image' in b]
    same = sum((bench/a['image']).read_bytes() == (bench/b['image']).read_bytes() for a, b in pairs)
    assert len(pairs) > 10 and same < len(pairs) // 10                                 # other random streams, other images
    assert set(Counter(r['source'] for r in pre)) == set(Counter(r['source'] for r in loaded.train)) - {'words'}   # reading text: the pool's alone


def test_skills_cover_the_brief(loaded):
    skills = {r['skill'] for r in loaded.train}
    assert {'recognition', 'verification', 'counting', 'spatial', 'reading', 'arithmetic', 'description',
            'multiple_choice', 'instruction'} <= skills
    assert any(len(r['conversations']) > 2 for r in loaded.train)


def test_held_out_suites_are_unseen_compositions(bench, loaded):
    train_pairs = {(r['concept'], r['skill']) for r in loaded.train}
    concepts, skills = {c for c, _ in train_pairs}, {s for _, s in train_pairs}
    held = {n for n, (_, h) in SUITES.items() if h}
    assert len(held) >= 1 and held == {n for n, v in benchmark_meta(bench)['suites'].items() if v['held_out']}
    for name, rs in loaded.evals.items():
        pairs = {(r['concept'], r['skill']) for r in rs}
        if name in held:
            assert not pairs & train_pairs, (name, pairs & train_pairs)
            assert {c for c, _ in pairs} <= concepts and {s for _, s in pairs} <= skills   # each part was seen
        else: assert pairs <= train_pairs, (name, pairs - train_pairs)


def test_eval_digits_are_not_training_digits(bench, loaded):
    def digit_bytes(recs): return {pixels(bench, r).tobytes() for r in recs if r['concept'] == 'digit' and r['skill'] == 'recognition'}
    tr, ev = digit_bytes(loaded.train), digit_bytes(loaded.evals['digit_recog'])
    assert tr and ev and not tr & ev


# ---- determinism, cache, errors ----------------------------------------------------------------

def tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    a, b = make(tmp_path/'a', n_train=120, n_eval=3, n_captions=8, seed=5), make(tmp_path/'b', n_train=120, n_eval=3, n_captions=8, seed=5)
    ta, tb = tree_bytes(a), tree_bytes(b)
    assert len(ta) > 150 and ta == tb
    c = make(tmp_path/'c', n_train=120, n_eval=3, n_captions=8, seed=6)
    assert (c/'train.json').read_bytes() != ta['train.json']


def test_cache_reuses_and_recovers_from_a_crash(tmp_path):
    out = make(tmp_path/'b', n_train=60, n_eval=2, n_captions=5)
    stamp = (out/'train.json').stat().st_mtime_ns
    t0 = time.perf_counter(); assert make(out, n_train=60, n_eval=2, n_captions=5) == out
    assert time.perf_counter() - t0 < 1 and (out/'train.json').stat().st_mtime_ns == stamp
    # a crash before benchmark.json: the folder is not taken as done
    (out/'benchmark.json').unlink(); (out/'train.json').write_text('[')
    with pytest.raises(CoincideError, match='no benchmark.json'): load_benchmark(out)
    make(out, n_train=60, n_eval=2, n_captions=5)
    assert len(load_benchmark(out).train) == 60
    # an edited file is noticed
    (out/'eval'/'count.json').write_text('[]')
    with pytest.raises(CoincideError, match='changed files'): make(out, n_train=60, n_eval=2, n_captions=5)
    make(out, n_train=60, n_eval=2, n_captions=5, overwrite=True)
    assert len(load_benchmark(out).evals['count']) == 2


def test_other_params_and_foreign_folders_are_refused(tmp_path):
    out = make(tmp_path/'b', n_train=60, n_eval=2, n_captions=5)
    with pytest.raises(CoincideError, match='overwrite'): make(out, n_train=70, n_eval=2, n_captions=5)
    assert len(make(out, n_train=70, n_eval=2, n_captions=5, overwrite=True).joinpath('train.json').read_text()) > 0
    assert len(load_benchmark(out).train) == 70
    (tmp_path/'mine').mkdir(); (tmp_path/'mine'/'notes.txt').write_text('keep')
    with pytest.raises(CoincideError, match='notes.txt'): make(tmp_path/'mine', n_train=60)
    assert (tmp_path/'mine'/'notes.txt').read_text() == 'keep'
    with pytest.raises(CoincideError, match='n_train'): make(tmp_path/'x', n_train=0)


def test_default_folder_is_a_cache_outside_the_repo(tmp_path, monkeypatch):
    monkeypatch.setenv('COINCIDE_CACHE', str(tmp_path/'cache'))
    out = make(n_train=40, n_eval=1, n_captions=4)
    assert out.parent == tmp_path/'cache'/'benchmark' and (out/'benchmark.json').is_file()
    assert make(n_train=40, n_eval=1, n_captions=4) == out and make(n_train=41, n_eval=1, n_captions=4) != out


def test_two_processes_making_the_same_benchmark_at_once(tmp_path):
    import subprocess, sys
    cmd = [str(Path(sys.executable).parent/'coincide'), 'benchmark', '--out', str(tmp_path/'b'), '--n-train', '300', '--n-eval', '3', '--n-captions', '10']
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert len(load_benchmark(tmp_path/'b').train) == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ['b']   # no .part folder left behind


def test_cli(cli, tmp_path):
    res = cli('benchmark', '--out', tmp_path/'b', '--n-train', 80, '--n-eval', 2, '--n-captions', 5, '--seed', 1)
    assert res.returncode == 0, res.stderr
    assert str(tmp_path/'b') in res.stdout and 'text-only' in res.stdout
    assert len(load_benchmark(tmp_path/'b').train) == 80
    res = cli('benchmark', '--out', tmp_path/'b', '--n-train', 90)
    assert res.returncode == 2 and 'coincide benchmark: error:' in res.stderr and '--overwrite' in res.stderr
    res = cli('benchmark', '--out', tmp_path/'c', '--n-train', -3)
    assert res.returncode == 2 and 'n_train must be a positive integer' in res.stderr


# ---- the committed fixture ---------------------------------------------------------------------

def test_fixture_is_valid_and_reproducible(tmp_path):
    train, caps, evals = load_benchmark(FIXTURE)
    assert len(train) == 50 and any('image' not in r for r in train)
    good, bad = validate_records(train, FIXTURE, decode=True)
    assert bad == []
    again = make(tmp_path/'f', **FIXTURE_CALL)
    for name in ['train.json', 'captions.json', 'pretrain.json', 'truth.json', *(f'eval/{s}.json' for s in SUITES)]:
        assert (again/name).read_bytes() == (FIXTURE/name).read_bytes(), name
    for p in sorted((FIXTURE/'images').rglob('*.png')):
        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(again/p.relative_to(FIXTURE)))), p


@pytest.mark.slow
def test_default_size_generates_within_a_minute(tmp_path):
    """CPU time of this process, so that other work on a shared machine does not make it flaky (wall: about 9 s idle)."""
    t0 = time.process_time()
    out = make(tmp_path/'full')
    assert time.process_time() - t0 < 60
    train, caps, evals = load_benchmark(out)
    assert len(train) == 10_000 and len(caps) == 4_000 and all(len(v) == 200 for v in evals.values())


# ---- damaged benchmark folders -----------------------------------------------------------------

def damaged_copy(tmp_path, name, text):
    "A copy of the committed fixture with `name` replaced by `text`."
    out = tmp_path/'b'
    shutil.copytree(FIXTURE, out)
    (out/name).write_text(text)
    return out


@pytest.mark.parametrize('name,text,message', [
    ('benchmark.json', '{"generator": "coincide.testbed.benchmark", "suites": {', 'benchmark.json: not valid JSON'),
    ('benchmark.json', '{}', "benchmark.json: no 'suites' table"),
    ('train.json', '[{"id": "a", "image": "x.png"}]', "train.json: record 0 (id 'a'): 'conversations' must be a list"),
    ('eval/count.json', '[{"id": "a", "conversations": [', 'count.json: line 1'),
])
def test_damaged_files_are_named_with_how_to_regenerate(tmp_path, name, text, message):
    out = damaged_copy(tmp_path, name, text)
    with pytest.raises(CoincideError) as e: load_benchmark(out)
    assert message in str(e.value) and f'coincide benchmark --out {out} --overwrite' in str(e.value), str(e.value)


def test_every_records_file_is_validated(tmp_path):
    "A training or pretraining record without its conversation is refused with its file, position and id."
    records = json.loads((FIXTURE/'train.json').read_text())
    del records[3]['conversations']
    out = damaged_copy(tmp_path, 'train.json', json.dumps(records))
    with pytest.raises(CoincideError, match=rf"train.json: record 3 \(id '{records[3]['id']}'\)"): load_benchmark(out)
    (out/'pretrain.json').write_text('[{"id": "p"}]')
    with pytest.raises(CoincideError, match=r"pretrain.json: record 0 \(id 'p'\)"): load_pretrain(out)


def test_missing_benchmark_json_names_the_folder(tmp_path):
    with pytest.raises(CoincideError) as e: benchmark_meta(tmp_path)
    assert f'run `coincide benchmark --out {tmp_path}` again' in str(e.value) and '{out' not in str(e.value)
