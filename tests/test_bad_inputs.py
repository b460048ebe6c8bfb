"""The bad-input suite: every case drives the CLI as a user would and must exit non-zero with a
message that names the file, record or parameter, and never show a traceback.

`python tests/test_bad_inputs.py` prints the table of cases (input, message) that nbs/08_cli.ipynb
carries; `test_cli_notebook_has_the_table` keeps the two in step.
"""
import json, sys
from pathlib import Path
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _records(tmp, recs, name='train.json'):
    p = tmp/name; p.write_text(json.dumps(recs)); return p


def _run(tmp, n=60, d=8, k=4, emb=None, layout=None, assignments=None, centroids=None):
    """A run folder with unit-norm embeddings, a layout, and (unless told otherwise) a clustering."""
    rng = np.random.default_rng(0)
    run = tmp/'run'; run.mkdir(exist_ok=True)
    x = rng.normal(size=(n, d)); x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.save(run/'embeddings.npy', (x if emb is None else emb(x)).astype(np.float16))
    half = d // 2
    lay = layout or {'blocks': [{'layer': 0, 'modality': 'vision', 'start': 0, 'stop': half},
                                {'layer': 0, 'modality': 'text', 'start': half, 'stop': d}]}
    (run/'layout.json').write_text(json.dumps(lay))
    np.save(run/'centroids.npy', x[:k].astype(np.float32) if centroids is None else centroids)
    np.save(run/'assignments.npy', np.arange(n, dtype=np.int64) % k if assignments is None else assignments)
    return run


def _truncate(path, keep=0.5):
    raw = path.read_bytes(); path.write_bytes(raw[:int(len(raw) * keep)])


TURN = lambda who, v: {'from': who, 'value': v}
GOOD = {'id': 'g', 'conversations': [TURN('human', 'hi'), TURN('gpt', 'hello')]}


def case_malformed_json(tmp):
    p = tmp/'train.json'; p.write_text('[{"id": 1,\n "conversations": }]'); return ['check-data', '--data', p]

def case_non_utf8(tmp):
    p = tmp/'train.json'; p.write_bytes('[{"id": "caf\u00e9"}]'.encode('latin-1')); return ['check-data', '--data', p]

def case_not_a_list(tmp):
    p = tmp/'train.json'; p.write_text('{"id": 1}'); return ['check-data', '--data', p]

def case_wrong_types(tmp):
    return ['check-data', '--data', _records(tmp, [GOOD, {'id': 2, 'conversations': [TURN('human', 3)]}])]

def case_missing_image(tmp):
    (tmp/'img').mkdir()
    rec = {'id': 'm', 'image': 'a.png', 'conversations': [TURN('human', '<image>\nq'), TURN('gpt', 'a')]}
    return ['check-data', '--data', _records(tmp, [rec]), '--images', tmp/'img']

def case_corrupt_image(tmp):
    (tmp/'img').mkdir(); (tmp/'img'/'a.png').write_bytes(b'\x89PNG\r\n\x1a\nbroken')
    rec = {'id': 'c', 'image': 'a.png', 'conversations': [TURN('human', '<image>\nq'), TURN('gpt', 'a')]}
    return ['check-data', '--data', _records(tmp, [rec]), '--images', tmp/'img', '--decode']

def case_escaping_path(tmp):
    (tmp/'img').mkdir()
    rec = {'id': 'e', 'image': '../../etc/passwd', 'conversations': [TURN('human', '<image>\nq'), TURN('gpt', 'a')]}
    return ['check-data', '--data', _records(tmp, [rec]), '--images', tmp/'img']

def case_nan_activations(tmp):
    return ['cluster', _run(tmp, emb=lambda x: np.where(np.arange(len(x))[:, None] == 7, np.nan, x)), '--k', 4]

def case_zero_activations(tmp):
    return ['cluster', _run(tmp, emb=lambda x: np.where(np.arange(len(x))[:, None] == 3, 0.0, x)), '--k', 4]

def case_k_above_n(tmp):
    return ['cluster', _run(tmp), '--k', 100]

def case_truncated_npy(tmp):
    run = _run(tmp); _truncate(run/'embeddings.npy'); return ['cluster', run, '--k', 4]

def case_row_counts_disagree(tmp):
    return ['select', _run(tmp, assignments=np.zeros(50, dtype=np.int64)), '--fraction', 0.2]

def case_layout_outside_columns(tmp):
    lay = {'blocks': [{'layer': 0, 'modality': 'vision', 'start': 0, 'stop': 4}, {'layer': 0, 'modality': 'text', 'start': 4, 'stop': 12}]}
    return ['select', _run(tmp, layout=lay), '--fraction', 0.2]

def case_fraction_outside(tmp):
    return ['select', _run(tmp), '--fraction', 1.5]

def case_tau_not_positive(tmp):
    return ['select', _run(tmp), '--fraction', 0.2, '--tau', 0]

def case_assignment_out_of_range(tmp):
    return ['select', _run(tmp, assignments=np.full(60, 9, dtype=np.int64)), '--fraction', 0.2]

def case_select_before_cluster(tmp):
    run = _run(tmp); (run/'centroids.npy').unlink(); return ['select', run, '--fraction', 0.2]

def case_verify_nothing(tmp):
    return ['verify', tmp]

def case_no_records(tmp):
    return ['check-data', '--data', _records(tmp, [])]

def case_folder_as_data(tmp):
    return ['check-data', '--data', tmp]

def case_missing_image_folder(tmp):
    return ['check-data', '--data', _records(tmp, [GOOD]), '--images', tmp/'no-such-folder']

def case_empty_npy(tmp):
    run = _run(tmp); (run/'assignments.npy').write_bytes(b''); return ['select', run, '--fraction', 0.2]

def case_unnormalised(tmp):
    return ['select', _run(tmp, emb=lambda x: 50 * x), '--fraction', 0.2]

def case_out_is_a_file(tmp):
    run = _run(tmp); (tmp/'taken').write_text('notes'); return ['select', run, '--fraction', 0.2, '--out', tmp/'taken']

def case_unknown_device(tmp):
    return ['select', _run(tmp), '--fraction', 0.2, '--device', 'gpu']

def case_damaged_manifest(tmp):
    (tmp/'manifest.json').write_text(json.dumps({'stage': 'select', 'params': None})); return ['verify', tmp]


# (input, case, message fragment that must appear on stderr or stdout)
CASES = [
    ('malformed JSON', case_malformed_json, 'line 2, column'),
    ('non-UTF-8 bytes', case_non_utf8, 'is not valid UTF-8'),
    ('JSON that is not a list', case_not_a_list, 'expected a JSON list of records'),
    ('a turn whose value is not a string', case_wrong_types, "record 1 (id 2): turn 0 has a 'value' of type int"),
    ('missing image', case_missing_image, "image file 'a.png' not found"),
    ('corrupt image', case_corrupt_image, "image file 'a.png' cannot be decoded"),
    ('image path escaping the image folder', case_escaping_path, 'leaves the image folder'),
    ('NaN activations', case_nan_activations, 'row 7'),
    ('all-zero activations', case_zero_activations, 'row 3'),
    ('K > N', case_k_above_n, 'larger than the number of samples'),
    ('truncated .npy', case_truncated_npy, 'embeddings.npy'),
    ('row counts that disagree', case_row_counts_disagree, '50 assignments for 60 embedding rows'),
    ('layout not covering the columns', case_layout_outside_columns, 'layout.json'),
    ('fraction outside (0, 1]', case_fraction_outside, '--fraction must be in (0, 1]'),
    ('tau <= 0', case_tau_not_positive, '--tau must be > 0'),
    ('assignment outside the centroids', case_assignment_out_of_range, 'assignments.npy'),
    ('select before cluster', case_select_before_cluster, 'coincide cluster'),
    ('verify on a folder without manifest', case_verify_nothing, 'no manifest.json'),
    ('a file with no records', case_no_records, 'holds no records'),
    ('a folder given as the records file', case_folder_as_data, 'is a folder; pass the records file itself'),
    ('missing image folder', case_missing_image_folder, 'no-such-folder: image folder not found'),
    ('empty .npy', case_empty_npy, 'assignments.npy: not a valid .npy array'),
    ('activations not L2-normalised', case_unnormalised, 'has norm 50'),
    ('output folder that is a file', case_out_is_a_file, 'is a file, not a folder'),
    ('unknown device', case_unknown_device, "'gpu' is not a torch device"),
    ('damaged manifest', case_damaged_manifest, "a damaged manifest (its 'params' is a NoneType"),
]


@pytest.mark.parametrize('label, case, fragment', CASES, ids=[c[0] for c in CASES])
def test_bad_input(cli, tmp_path, label, case, fragment):
    res = cli(*case(tmp_path))
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert fragment in out, out
    assert 'Traceback' not in out


def table() -> str:
    """The table of bad inputs in nbs/08_cli.ipynb: input, command, and the message a user sees (temporary paths shortened)."""
    import tempfile
    from conftest import run_cli
    rows = ['| bad input | command | what coincide says |', '|---|---|---|']
    for label, case, _ in CASES:
        with tempfile.TemporaryDirectory() as d:
            argv = case(Path(d))
            res = run_cli(*argv)
            lines = (res.stderr + res.stdout).splitlines()
            msg = next((l for l in lines if ': error: ' in l), None) or next(l for l in lines if '(id ' in l)
            msg = msg.strip().replace(d, '...').replace('|', '/')
        rows.append(f'| {label} | `coincide {argv[0]}` | {msg} |')
    return '\n'.join(rows)


def test_cli_notebook_has_the_table():
    nb = json.loads((ROOT/'nbs'/'08_cli.ipynb').read_text())
    text = '\n'.join(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown')
    for label, _, fragment in CASES:
        row = next((l for l in text.splitlines() if l.startswith(f'| {label} |')), None)
        assert row is not None and fragment.replace('|', '/') in row, \
            f'nbs/08_cli.ipynb lacks the row for {label!r}: paste the output of `python tests/test_bad_inputs.py`'


if __name__ == '__main__':
    sys.path.insert(0, str(Path(__file__).parent))
    print(table())
