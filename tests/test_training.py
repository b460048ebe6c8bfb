"""coincide.testbed.training: encoding cache, answer-only loss, deterministic training, generation and scoring."""
import json, shutil
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
from dataclasses import replace
from coincide.testbed.benchmark import make, benchmark_meta
from coincide.core import CoincideError
from coincide.data import load_records, open_image
from coincide.model_scores import encode_example, answer_mask
from coincide.testbed.models import train_tokenizer, record_texts, build_processor, build_tiny_llava
from coincide.testbed.training import (encode_records, encode_suites, collate, answer_loss, TrainConfig, train_vlm, generate_answers,
                               evaluate_vlm, relative_performance)
from coincide.testbed.scoring import normalize_answer, is_correct, reference_answer


@pytest.fixture(scope='module')
def bench(tmp_path_factory):
    """(folder, training records, processor, encoded records) of a small benchmark."""
    d = make(tmp_path_factory.mktemp('bench')/'b', n_train=32, n_eval=8, n_captions=16)
    recs = load_records(d/'train.json')
    proc = build_processor(train_tokenizer(record_texts(recs), vocab_size=200))
    return d, recs, proc, encode_records(proc, recs, d)


CFG = TrainConfig(epochs=2, batch_size=8, lr=3e-3)


def _train(proc, enc, seed, cfg=CFG, idx=None):
    m = build_tiny_llava('test', proc.tokenizer, seed=0)
    losses = train_vlm(m, enc, idx, cfg, seed=seed, pad_id=proc.tokenizer.pad_token_id, progress=False)
    return m, losses


def _same(a, b): return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_encoded_set_matches_encode_example(bench):
    d, recs, proc, enc = bench
    for i, r in enumerate(recs):
        ex = encode_example(proc, r, open_image(r, d))
        assert torch.equal(enc.ids[i], ex['input_ids']) and torch.equal(enc.labels[i], ex['labels'])
        if 'image' in r: assert torch.equal(enc.pixels[enc.image_index[i]], ex['pixel_values'][0])


def test_batch_labels_are_masked_outside_answers(bench):
    d, recs, proc, enc = bench
    one_turn = [i for i, r in enumerate(recs) if len(r['conversations']) == 2]
    rows = [i for i in one_turn if 'image' in recs[i]][:2] + [i for i in one_turn if 'image' not in recs[i]][:1]
    b = collate(enc, rows, proc.tokenizer.pad_token_id)
    pad = b['attention_mask'] == 0
    assert (b['labels'][pad] == -100).all() and pad.any()
    img = b['input_ids'] == proc.tokenizer.convert_tokens_to_ids('<image>')
    assert (b['labels'][img] == -100).all()
    for row, i in enumerate(rows):
        m = answer_mask(b['labels'][row])
        assert proc.tokenizer.decode(b['input_ids'][row][m]) == ' ' + recs[i]['conversations'][-1]['value'] + '</s>'


def test_answer_loss_equals_hf_shifted_loss(bench):
    d, recs, proc, enc = bench
    m = build_tiny_llava('test', proc.tokenizer, seed=1)
    b = collate(enc, range(6), proc.tokenizer.pad_token_id)
    with torch.no_grad():
        ref = m(input_ids=b['input_ids'], attention_mask=b['attention_mask'], pixel_values=b['pixel_values'], labels=b['labels']).loss
        assert torch.allclose(answer_loss(m, b), ref, atol=1e-5)


def test_training_is_deterministic_for_a_seed(bench):
    d, recs, proc, enc = bench
    m1, l1 = _train(proc, enc, 0); m2, l2 = _train(proc, enc, 0); m3, _ = _train(proc, enc, 5)
    assert l1 == l2 and _same(m1, m2) and not _same(m1, m3)
    assert np.mean(l1[-2:]) < np.mean(l1[:2])


def test_subset_indices_and_bad_indices(bench):
    d, recs, proc, enc = bench
    _, l = _train(proc, enc, 0, idx=np.arange(8))
    assert len(l) == 2                                              # 8 records x 2 epochs / batch 8
    with pytest.raises(CoincideError, match='out of range'): _train(proc, enc, 0, idx=[0, 99])
    with pytest.raises(CoincideError, match='no records'): _train(proc, enc, 0, idx=[])


def test_lora_is_deterministic_and_merged(bench):
    d, recs, proc, enc = bench
    cfg = replace(CFG, tune='lora', lora_r=4, lora_alpha=8)
    m1, _ = _train(proc, enc, 0, cfg); m2, _ = _train(proc, enc, 0, cfg)
    assert type(m1).__name__ == 'LlavaForConditionalGeneration' and _same(m1, m2)
    base = build_tiny_llava('test', proc.tokenizer, seed=0)
    vis, vis0 = m1.model.vision_tower.state_dict(), base.model.vision_tower.state_dict()
    assert all(torch.equal(vis[k], vis0[k]) for k in vis0)
    assert not torch.equal(m1.model.language_model.layers[0].self_attn.q_proj.weight, base.model.language_model.layers[0].self_attn.q_proj.weight)


def test_batched_generation_equals_one_by_one(bench):
    d, recs, proc, enc = bench
    m, _ = _train(proc, enc, 0, replace(CFG, epochs=3))
    ev = load_records(d/'eval'/'colour_recog.json')[:4] + load_records(d/'eval'/'text_qa.json')[:4]
    batched = generate_answers(m, proc, encode_records(proc, ev, d, prompt_only=True), batch_size=8)
    alone = [generate_answers(m, proc, encode_records(proc, [r], d, prompt_only=True))[0] for r in ev]
    assert batched == alone


def test_evaluate_table(bench):
    d, recs, proc, enc = bench
    m, _ = _train(proc, enc, 0)
    suites = {s: load_records(d/'eval'/f'{s}.json') for s in ('colour_recog', 'text_qa')}
    chance = {s: benchmark_meta(d)['suites'][s]['chance'] for s in suites}
    tab = evaluate_vlm(m, proc, encode_suites(proc, suites, d), suites, chance)
    assert list(tab.index) == ['colour_recog', 'text_qa'] and (tab.n == 8).all() and tab.chance.to_dict() == chance


def test_evaluate_scores_each_answer_against_its_own_record(bench, monkeypatch):
    import coincide.testbed.training as training
    d, recs, proc, enc = bench
    suites = {s: load_records(d/'eval'/f'{s}.json') for s in ('colour_recog', 'text_qa')}
    enc_suites = encode_suites(proc, suites, d)
    answers = {id(enc_suites[s]): [reference_answer(r) if i % 2 == 0 else 'zzz' for i, r in enumerate(suites[s])] for s in suites}
    monkeypatch.setattr(training, 'generate_answers', lambda model, processor, enc, *a: answers[id(enc)])   # every other answer right
    tab = evaluate_vlm(None, proc, enc_suites, suites)
    assert tab.accuracy.to_dict() == {'colour_recog': 0.5, 'text_qa': 0.5} and tab.chance.isna().all()


@pytest.mark.parametrize('pred,ref,ok', [('Red.', 'red', True), ('the red', 'red', True), ('  RED  square ', 'red square', True),
                                         ('reds', 'red', False), ('2', 'two', False), ('an apple', 'apple', True)])
def test_normalised_exact_match(pred, ref, ok):
    assert is_correct(pred, {'conversations': [{'from': 'human', 'value': 'q'}, {'from': 'gpt', 'value': ref}]}) == ok


def test_multiple_choice_accepts_letter_or_text():
    rec = {'conversations': [{'from': 'human', 'value': 'A. cat B. dog'}, {'from': 'gpt', 'value': 'B'}], 'choices': ['cat', 'dog']}
    assert [is_correct(p, rec) for p in ('B', '(b)', 'dog', 'B. dog', 'A', 'cat')] == [True, True, True, True, False, False]
    assert normalize_answer('The  A-team!') == 'team'


def test_relative_performance_arithmetic():
    assert relative_performance({'a': 0.4, 'b': 0.6}, {'a': 0.8, 'b': 0.6}) == pytest.approx(75.0)
    tab = pd.DataFrame({'accuracy': [0.2, 0.9]}, index=['a', 'b'])
    assert relative_performance(tab, tab) == pytest.approx(100.0)
    with pytest.raises(CoincideError, match='suites differ'): relative_performance({'a': 1.0}, {'b': 1.0})
    with pytest.raises(CoincideError, match='score is 0'): relative_performance({'a': 1.0}, {'a': 0.0})


def test_train_main_writes_model_eval_and_manifest(bench, tmp_path):
    import argparse, json
    from coincide.core import save_npy
    from coincide.testbed.models import load_vlm
    from coincide.testbed.training import train_args, train_main
    d = bench[0]
    save_npy(tmp_path/'indices.npy', np.arange(0, 32, 2))
    p = argparse.ArgumentParser(); train_args(p)
    args = p.parse_args(['--bench', str(d), '--out', str(tmp_path/'run'), '--indices', str(tmp_path/'indices.npy'),
                         '--preset', 'test', '--epochs', '1'])
    assert train_main(args) == 0
    man = json.loads((tmp_path/'run'/'train.manifest.json').read_text())
    assert man['params']['n_selected'] == 16 and man['seed'] == 0
    assert (tmp_path/'pretrained-test'/'config.json').is_file() and man['params']['device'] == 'cpu'
    model, proc = load_vlm(tmp_path/'run')
    assert len(model.model.language_model.layers) == 2
    bad = p.parse_args(['--bench', str(d), '--out', str(tmp_path/'r2'), '--init', str(tmp_path/'nowhere')])
    with pytest.raises(CoincideError, match='not a model folder'): train_main(bad)


def test_train_and_demo_take_a_device(cli, tmp_path):
    for cmd in ('train', 'demo'):
        res = cli(cmd, '--help')
        assert res.returncode == 0 and '--device' in res.stdout, res.stdout
    if not torch.cuda.is_available():
        for args in (('train', '--bench', tmp_path, '--out', tmp_path/'run'), ('demo', '--out', tmp_path/'demo')):
            res = cli(*args, '--device', 'cuda')
            assert res.returncode == 2 and 'no CUDA GPU' in res.stderr and 'Traceback' not in res.stderr, res.stderr
    res = cli('demo', '--preset', 'power', '--from', tmp_path/'none.csv', '--out', tmp_path/'p')
    assert res.returncode == 2 and 'run `coincide demo` first' in res.stderr, res.stderr


def test_pretrained_target_reads_the_disjoint_text(bench, tmp_path, monkeypatch):
    from coincide.testbed.training import setup_benchmark, pretrain_target, finetune, TrainConfig
    import coincide.testbed.training as training
    setup = setup_benchmark(bench[0], vocab_size=200)
    assert setup.pretrain is not None and len(setup.pretrain) == 32 and (setup.pretrain.image_index >= 0).any()   # grounded: images and questions
    trained_on, train_vlm = [], training.train_vlm
    def recording(model, enc, *a, **k): trained_on.append(enc.ids); return train_vlm(model, enc, *a, **k)
    monkeypatch.setattr(training, 'train_vlm', recording)
    pretrain_target(setup, tmp_path/'pre', 'test', device='cpu')
    ids = trained_on[0]                                             # stage 1: the captions, then the pretraining pool
    assert len(ids) == len(setup.captions) + len(setup.pretrain)
    assert all(torch.equal(a, b) for a, b in zip(ids, list(setup.captions.ids) + list(setup.pretrain.ids)))
    monkeypatch.undo()
    a, b = (finetune(setup, tmp_path/'pre', np.arange(8), TrainConfig(epochs=1, batch_size=4), seed=s, device='cpu') for s in (0, 1))
    assert not _same(a, b)                                          # the seed changes stage 2's data order


# ---- bad inputs of `coincide train` --------------------------------------------------------------

FIXTURE = Path(__file__).parent.parent/'data'/'fixture'   # a committed 50-record benchmark


def _refused(res, *fragments):
    "`coincide` exited 2 with a message holding every fragment, and no traceback."
    assert res.returncode == 2 and 'Traceback' not in res.stderr, res.stderr
    assert all(f in res.stderr for f in fragments), res.stderr


def test_train_on_a_missing_or_damaged_benchmark_says_how_to_regenerate(cli_in_process, tmp_path):
    _refused(cli_in_process('train', '--bench', tmp_path/'nobench', '--out', tmp_path/'tr'),
             f"{tmp_path/'nobench'}: benchmark folder not found", f"`coincide benchmark --out {tmp_path/'nobench'}`")
    bench = tmp_path/'b'; shutil.copytree(FIXTURE, bench)
    meta = (bench/'benchmark.json').read_text()
    (bench/'benchmark.json').write_text(meta[:len(meta) // 2])
    _refused(cli_in_process('train', '--bench', bench, '--out', tmp_path/'tr'), f"{bench/'benchmark.json'}: not valid JSON",
             f'coincide benchmark --out {bench} --overwrite')
    (bench/'benchmark.json').write_text('{}')
    _refused(cli_in_process('train', '--bench', bench, '--out', tmp_path/'tr'), "benchmark.json: no 'suites' table")
    (bench/'benchmark.json').write_text(meta)
    records = json.loads((bench/'train.json').read_text()); del records[3]['conversations']
    (bench/'train.json').write_text(json.dumps(records))
    _refused(cli_in_process('train', '--bench', bench, '--out', tmp_path/'tr'), f"{bench/'train.json'}: record 3 (id '{records[3]['id']}')")


@pytest.mark.parametrize('indices,message', [([1, 60], 'index 60 is out of range for 50 records'), ([1, 1], 'index 1 is selected twice')])
def test_train_names_a_bad_indices_file(cli_in_process, tmp_path, indices, message):
    np.save(tmp_path/'sel.npy', np.array(indices))
    _refused(cli_in_process('train', '--bench', FIXTURE, '--out', tmp_path/'tr', '--preset', 'test', '--indices', tmp_path/'sel.npy'),
             f"--indices {tmp_path/'sel.npy'}: {message}", 'pass the indices.npy that `coincide select`')
