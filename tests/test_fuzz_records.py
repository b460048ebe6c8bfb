"""Hypothesis fuzzing of the record validator: any JSON value is either accepted as a good record or reported, never a crash."""
import json
from hypothesis import given, settings, strategies as st
from coincide.core import CoincideError
from coincide.data import load_records, validate_records, write_subset

json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
json_value = st.recursive(json_leaf, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4), max_leaves=12)
turn = st.fixed_dictionaries({'from': st.sampled_from(['human', 'gpt', 'system', 3]), 'value': st.text(max_size=20) | st.just('<image>\nQ') | json_leaf})
record = st.fixed_dictionaries({'id': st.text(max_size=4) | st.integers(0, 5) | st.none(),
                                'conversations': st.lists(turn, max_size=3) | json_value},
                               optional={'image': st.sampled_from(['a.png', '../x.png', '/abs.png', '', 'coco/b.png']) | json_leaf})


def is_good(rec):
    conv = rec['conversations']
    n_img = sum(t['value'].count('<image>') for t in conv)
    return (isinstance(rec['id'], (str, int)) and rec['id'] != '' and conv and conv[0]['from'] == 'human'
            and all(t['from'] in ('human', 'gpt') and isinstance(t['value'], str) for t in conv)
            and (rec.get('image') is not None) == (n_img > 0))


@settings(max_examples=300, deadline=None)
@given(st.lists(record | json_value, max_size=8))
def test_validator_partitions_without_crashing(records):
    good, bad = validate_records(records)
    assert len(good) + len(bad) == len(records)
    assert all(is_good(r) for r in good)
    ids = [r['id'] for r in good]
    assert len(ids) == len(set(ids))
    assert all(0 <= b.index < len(records) and b.problem for b in bad)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_loader_reports_any_bytes(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp('fuzz')/'train.json'
    path.write_bytes(raw)
    try: records = load_records(path)
    except CoincideError as e: assert 'train.json' in str(e)
    else: assert isinstance(records, list)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-3, 12), max_size=10))
def test_write_subset_checks_indices(tmp_path_factory, indices):
    records = [{'id': i, 'conversations': [{'from': 'human', 'value': 'q'}]} for i in range(10)]
    out = tmp_path_factory.mktemp('sub')/'subset.json'
    valid = all(0 <= i < 10 for i in indices) and len(set(indices)) == len(indices)
    try: write_subset(records, indices, out)
    except CoincideError: assert not valid
    else:
        assert valid
        assert [r['id'] for r in json.loads(out.read_text())] == sorted(indices)
