"""coincide.testbed.models: tokenizer, prompt format and loss mask, save/load through the Auto classes."""
import pytest, torch
from transformers import AutoModelForImageTextToText, AutoProcessor
from coincide.testbed.benchmark import make
from coincide.core import CoincideError
from coincide.data import load_records, open_image
from coincide.data import IMAGE_TOKEN
from coincide.model_scores import encode_example, answer_mask, num_image_tokens
from coincide.testbed.models import (train_tokenizer, record_texts, build_processor, build_tiny_llava, save_vlm, load_vlm,
                                     count_parameters, PRESETS)


@pytest.fixture(scope='module')
def bench(tmp_path_factory):
    """(folder, training records, processor) of a small benchmark."""
    d = make(tmp_path_factory.mktemp('bench')/'b', n_train=24, n_eval=1, n_captions=1)
    recs = load_records(d/'train.json')
    tok = train_tokenizer(record_texts(recs), vocab_size=200)
    return d, recs, build_processor(tok)


def one_turn(recs, image=True):
    """The records with one question, with an image (or text-only if `image` is False)."""
    return [r for r in recs if len(r['conversations']) == 2 and ('image' in r) == image]


def test_loss_mask_is_exactly_the_answer(bench):
    d, recs, proc = bench
    tok = proc.tokenizer
    for rec in one_turn(recs)[:6] + one_turn(recs, image=False)[:2]:
        ex = encode_example(proc, rec, open_image(rec, d))
        m = answer_mask(ex['labels'])
        assert torch.equal(ex['labels'][m], ex['input_ids'][m])
        assert (ex['labels'][~m] == -100).all()
        assert tok.decode(ex['input_ids'][m]) == ' ' + rec['conversations'][-1]['value'] + tok.eos_token
        assert ex['input_ids'][-1] == tok.eos_token_id and m[-1] and not m[:-len(tok(' ' + rec['conversations'][-1]['value'], add_special_tokens=False).input_ids) - 1].any()
        n_img = (ex['input_ids'] == tok.convert_tokens_to_ids(IMAGE_TOKEN)).sum().item()
        assert n_img == (num_image_tokens(proc) if 'image' in rec else 0)


def test_multi_turn_masks_every_answer(bench):
    d, recs, proc = bench
    rec = dict(one_turn(recs, image=False)[0], conversations=[{'from': 'human', 'value': 'what is 1 plus 1?'}, {'from': 'gpt', 'value': '2'},
                                       {'from': 'human', 'value': 'what is 2 plus 2?'}, {'from': 'gpt', 'value': '4'}])
    ex = encode_example(proc, rec)
    m = answer_mask(ex['labels']).int()
    assert (m[1:] - m[:-1] == 1).sum() == 2                      # two separate answer spans
    assert proc.tokenizer.decode(ex['input_ids'][m.bool()]) == ' 2</s> 4</s>'


def test_prompt_matches_chat_template_and_processor(bench):
    d, recs, proc = bench
    rec = one_turn(recs)[0]
    q = rec['conversations'][0]['value'].replace(IMAGE_TOKEN + '\n', '')
    msgs = [{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': q}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True)
    ref = proc(images=open_image(rec, d), text=text, return_tensors='pt')
    ex = encode_example(proc, rec, open_image(rec, d), prompt_only=True)
    assert ex['input_ids'].tolist() == ref['input_ids'][0].tolist()
    assert torch.allclose(ex["pixel_values"], ref["pixel_values"], atol=1e-5)


def test_missing_image_is_an_error(bench):
    d, recs, proc = bench
    with pytest.raises(CoincideError, match='has an image but none was given'): encode_example(proc, one_turn(recs)[0], None)


def test_save_load_round_trip_gives_same_logits(bench, tmp_path):
    d, recs, proc = bench
    model = build_tiny_llava('test', proc.tokenizer, seed=3)
    rec = one_turn(recs)[0]
    ex = encode_example(proc, rec, open_image(rec, d))
    with torch.no_grad(): before = model(input_ids=ex['input_ids'][None], pixel_values=ex['pixel_values']).logits
    save_vlm(model, proc, tmp_path/'m')
    proc2 = AutoProcessor.from_pretrained(tmp_path/'m', local_files_only=True)        # how the extraction stage loads it
    model2 = AutoModelForImageTextToText.from_pretrained(tmp_path/'m', local_files_only=True).eval()
    ex2 = encode_example(proc2, rec, open_image(rec, d))
    assert torch.equal(ex2['input_ids'], ex['input_ids'])
    with torch.no_grad(): after = model2(input_ids=ex2['input_ids'][None], pixel_values=ex2['pixel_values']).logits
    assert torch.equal(before, after)
    m3, p3 = load_vlm(tmp_path/'m')
    assert count_parameters(m3) == count_parameters(model)


def test_load_vlm_rejects_non_model_folder(bench):
    with pytest.raises(CoincideError, match='not a model folder'): load_vlm(bench[0])


def test_presets_have_readable_layers(bench):
    tok = bench[2].tokenizer
    ref = build_tiny_llava('reference', tok)
    assert len(ref.model.language_model.layers) >= 4
    assert count_parameters(build_tiny_llava('target', tok))['total'] > count_parameters(ref)['total']
    assert set(PRESETS) >= {'reference', 'target', 'test'}
