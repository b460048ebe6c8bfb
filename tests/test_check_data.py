"""`coincide check-data` driven as a user would: every kind of bad record gets a message naming it."""
import json
import pytest
from PIL import Image


def turn(who, text): return {'from': who, 'value': text}


@pytest.fixture
def images(tmp_path):
    root = tmp_path/'images'; (root/'coco').mkdir(parents=True)
    Image.new('RGB', (8, 8), 'blue').save(root/'coco'/'ok.png')
    (root/'coco'/'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n not really')
    return root


GOOD = {'id': 'g', 'image': 'coco/ok.png', 'conversations': [turn('human', '<image>\nWhat colour?'), turn('gpt', 'blue')]}
TEXT = {'id': 't', 'conversations': [turn('human', 'Say hi'), turn('gpt', 'hi')]}

BAD_RECORDS = {
    'no conversations': ({'id': 'b', 'image': 'coco/ok.png'}, "'conversations' must be a list"),
    'empty conversation': ({'id': 'b', 'conversations': []}, "'conversations' is empty"),
    'unknown role': ({'id': 'b', 'conversations': [turn('system', 'x')]}, "unknown role 'system'"),
    'image token without image': ({'id': 'b', 'conversations': [turn('human', '<image>\nhi'), turn('gpt', 'x')]}, "but no 'image'"),
    'image without image token': ({'id': 'b', 'image': 'coco/ok.png', 'conversations': [turn('human', 'hi'), turn('gpt', 'x')]}, 'no <image>'),
    'missing image': ({**GOOD, 'id': 'b', 'image': 'coco/gone.png'}, "'coco/gone.png' not found"),
    'corrupt image': ({**GOOD, 'id': 'b', 'image': 'coco/corrupt.png'}, 'cannot be decoded'),
    'path escaping the image folder': ({**GOOD, 'id': 'b', 'image': '../../etc/passwd'}, 'leaves the image folder'),
    'absolute image path': ({**GOOD, 'id': 'b', 'image': '/etc/passwd'}, 'is absolute'),
    'duplicate id': ({**TEXT}, "duplicate id 't'"),
}


@pytest.mark.parametrize('case', list(BAD_RECORDS))
def test_bad_record_is_named(cli, tmp_path, images, case):
    bad, message = BAD_RECORDS[case]
    path = tmp_path/'train.json'
    path.write_text(json.dumps([GOOD, TEXT, bad]))
    res = cli('check-data', '--data', path, '--images', images, '--decode')
    assert res.returncode == 1, res.stderr
    assert "record 2 (id 'b'" in res.stdout or "record 2 (id 't'" in res.stdout
    assert message in res.stdout
    assert '2 of 3 records are good, 1 bad' in res.stdout
    assert 'Traceback' not in res.stderr


def test_strict_stops_with_file_and_record(cli, tmp_path, images):
    path = tmp_path/'train.json'
    path.write_text(json.dumps([GOOD, {'id': 'b', 'conversations': []}]))
    res = cli('check-data', '--data', path, '--images', images, '--strict')
    assert res.returncode == 2
    assert "train.json: record 1 (id 'b'): 'conversations' is empty" in res.stderr
    assert 'Traceback' not in res.stderr


@pytest.mark.parametrize('content, message', [
    (b'[{"id": 1,\n "conversations": [}]', 'line 2, column'),
    (b'{"id": 1}', 'expected a JSON list'),
    ('[{"id": "caf\u00e9"}]'.encode('latin-1'), 'not valid UTF-8'),
])
def test_unreadable_file(cli, tmp_path, content, message):
    path = tmp_path/'train.json'
    path.write_bytes(content)
    res = cli('check-data', '--data', path)
    assert res.returncode == 2
    assert 'train.json' in res.stderr and message in res.stderr
    assert 'Traceback' not in res.stderr


def test_good_file_counts_sources(cli, tmp_path, images):
    path = tmp_path/'train.jsonl'
    path.write_text('\n'.join(json.dumps(r) for r in [GOOD, TEXT]))
    res = cli('check-data', '--data', path, '--images', images, '--decode')
    assert res.returncode == 0, res.stdout + res.stderr
    assert 'sources: coco 1, text 1' in res.stdout
