"""`coincide extract` driven as a user would, on a tiny LLaVA saved to a folder: outputs, determinism,
resume after SIGKILL, shards, and clear errors (exit 2, no traceback) for bad input.

Importing transformers takes tens of seconds on a loaded machine, so only a few tests start the
console script in a subprocess (`cli`); the others call the same entry point, `coincide.cli.main`,
in this process (`main`)."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest, torch
from PIL import Image

import coincide.activations as A
from coincide.core import CoincideError
from coincide.testbed.portable import PORTABLE_ENV
from test_families import LAYERS, build_llava, make_records, model_spec, turn


@pytest.fixture(scope='module')
def llava(tmp_path_factory): return model_spec('llava', tmp_path_factory.mktemp('models'))


@pytest.fixture
def main(capsys):
    "Run `coincide ARGS...` in this process: returns (exit status, stderr)."
    from coincide.cli import main as cli_main
    def run(*argv):
        rc = cli_main(list(map(str, argv)))
        return rc, capsys.readouterr().err
    return run


@pytest.fixture(scope='module')
def data(tmp_path_factory): return make_records(tmp_path_factory.mktemp('data'))


def args(data, model, out, *extra):
    return ['extract', '--data', data, '--images', data.parent/'images', '--model', model, '--layers', *LAYERS,
            '--out', out, '--batch-size', 2, '--num-workers', 0, *extra]


def test_cli_writes_run_folder(cli, llava, data, tmp_path):
    res = cli(*args(data, llava, tmp_path/'run'))
    assert res.returncode == 0, res.stderr
    E = np.load(tmp_path/'run'/'embeddings.npy')
    assert E.shape == (8, 2 * len(LAYERS) * 32) and E.dtype == np.float16
    man = json.loads((tmp_path/'run'/'extract.manifest.json').read_text())
    assert man['stage'] == 'extract' and man['params']['layers'] == LAYERS and man['params']['batch_size'] == 2
    assert man['outputs']['embeddings']['sha256'] and not (tmp_path/'run'/'parts').exists()
    blocks = json.loads((tmp_path/'run'/'layout.json').read_text())['blocks']
    assert blocks[-1] == {'layer': 2, 'modality': 'text', 'start': 96, 'stop': 128}


def test_finished_run_is_left_alone(main, llava, data, tmp_path):
    assert main(*args(data, llava, tmp_path/'run'))[0] == 0
    before = (tmp_path/'run'/'embeddings.npy').stat().st_mtime_ns
    rc, err = main(*args(data, llava, tmp_path/'run'))
    assert rc == 0 and 'already complete' in err and (tmp_path/'run'/'embeddings.npy').stat().st_mtime_ns == before
    rc, err = main(*args(data, llava, tmp_path/'run', '--layers', 0, 1))
    assert rc == 2 and 'already holds a finished extraction with different arguments (layers)' in err


def test_two_runs_identical_and_workers_agree(main, llava, data, tmp_path):
    assert main(*args(data, llava, tmp_path/'a'))[0] == 0
    rc, err = main(*args(data, llava, tmp_path/'b')[:-2], '--num-workers', 2)   # images decoded in 2 DataLoader workers
    assert rc == 0, err
    assert (tmp_path/'a'/'embeddings.npy').read_bytes() == (tmp_path/'b'/'embeddings.npy').read_bytes()


SLOW_CLI = """
import sys, time
import coincide.activations as A
from coincide.cli import main
real = A.batch_features
def batch_features(*a, **k):
    time.sleep(0.2); return real(*a, **k)
A.batch_features = batch_features
sys.exit(main(sys.argv[1:]))
"""


def test_cli_killed_and_resumed_gives_identical_bytes(main, llava, data, tmp_path):
    assert main(*args(data, llava, tmp_path/'whole', '--batch-size', 1))[0] == 0
    cmd = [sys.executable, '-c', SLOW_CLI, *map(str, args(data, llava, tmp_path/'killed', '--batch-size', 1))]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    progress, t0 = tmp_path/'killed'/'parts'/'part-0-of-1.progress.json', time.time()
    while not (progress.exists() and json.loads(progress.read_text())['batches_done'] >= 2):
        assert proc.poll() is None and time.time() - t0 < 120, proc.stderr.read().decode() if proc.poll() is not None else 'timeout'
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert not (tmp_path/'killed'/'embeddings.npy').exists()
    rc, err = main(*args(data, llava, tmp_path/'killed', '--batch-size', 3))  # other arguments: refused, saying why
    assert rc == 2 and 'different arguments' in err and 'batch_size' in err
    rc, err = main(*args(data, llava, tmp_path/'killed', '--batch-size', 1))
    assert rc == 0, err
    assert (tmp_path/'killed'/'embeddings.npy').read_bytes() == (tmp_path/'whole'/'embeddings.npy').read_bytes()


def test_shards_then_merge(main, llava, data, tmp_path):
    assert main(*args(data, llava, tmp_path/'one'))[0] == 0
    for i in (1, 0):
        rc, err = main(*args(data, llava, tmp_path/'sh', '--shard', f'{i}/2'))
        assert rc == 0, err
    assert (tmp_path/'sh'/'embeddings.npy').read_bytes() == (tmp_path/'one'/'embeddings.npy').read_bytes()


def test_merge_flag_waits_for_every_shard(main, llava, data, tmp_path):
    assert main(*args(data, llava, tmp_path/'sh', '--shard', '0/3'))[0] == 0
    rc, err = main(*args(data, llava, tmp_path/'sh', '--shard', '0/3', '--merge'))
    assert rc == 2 and 'not every shard of 3 has finished' in err
    for i in (1, 2): assert main(*args(data, llava, tmp_path/'sh', '--shard', f'{i}/3'))[0] == 0
    assert (tmp_path/'sh'/'embeddings.npy').exists()


def test_ranks_from_environment(llava, data, tmp_path, monkeypatch):
    one = A.extract(data, data.parent/'images', llava, LAYERS, tmp_path/'one', batch_size=2)
    for rank in (0, 1):
        monkeypatch.setenv('RANK', str(rank)); monkeypatch.setenv('WORLD_SIZE', '2')
        out = A.extract(data, data.parent/'images', llava, LAYERS, tmp_path/'ranks', batch_size=2)
    assert out.read_bytes() == one.read_bytes()


def _records(tmp_path, recs):
    (tmp_path/'images').mkdir(exist_ok=True)
    Image.new('RGB', (20, 24), 'red').save(tmp_path/'images'/'ok.png')
    (tmp_path/'train.json').write_text(json.dumps(recs))
    return tmp_path/'train.json'


GOOD = {'id': 'g', 'image': 'ok.png', 'conversations': [turn('human', '<image>\nWhat is in the image?'), turn('gpt', 'A red square.')]}


def test_cli_missing_image(cli, llava, tmp_path):
    data = _records(tmp_path, [GOOD, {**GOOD, 'id': 'b', 'image': 'gone.png'}])
    res = cli(*args(data, llava, tmp_path/'run'))
    assert res.returncode == 2 and "record 1 (id 'b'): image file 'gone.png' not found" in res.stderr and 'Traceback' not in res.stderr, res.stderr


def test_path_escaping_image_folder(main, llava, tmp_path):
    data = _records(tmp_path, [GOOD, {**GOOD, 'id': 'b', 'image': '../../etc/passwd'}])
    rc, err = main(*args(data, llava, tmp_path/'run'))
    assert rc == 2 and "record 1 (id 'b'): image path '../../etc/passwd' leaves the image folder" in err


def test_layer_out_of_range(main, llava, data, tmp_path):
    rc, err = main('extract', '--data', data, '--images', data.parent/'images', '--model', llava, '--layers', 1, 9, '--out', tmp_path/'run')
    assert rc == 2 and 'layer 9 is out of range; the model has 4 decoder layers' in err
    assert not (tmp_path/'run').exists()                                    # nothing written before the check


def test_model_without_image_token(main, data, tmp_path):
    "A LLaVA whose tokenizer has no <image> token: the processor cannot mark image positions."
    from transformers import LlavaProcessor
    vlm, proc = build_llava()
    from test_families import tokenizer
    tok = tokenizer(['<pad>', '<s>', '</s>'], bos_token='<s>', eos_token='</s>', pad_token='<pad>')
    LlavaProcessor(image_processor=proc.image_processor, tokenizer=tok, patch_size=4).save_pretrained(tmp_path/'m')
    vlm.save_pretrained(tmp_path/'m')
    rc, err = main(*args(data, tmp_path/'m', tmp_path/'run'))
    assert rc == 2 and 'no image token' in err, err


def test_not_a_vlm(main, data, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM
    LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)).save_pretrained(tmp_path/'m')
    rc, err = main(*args(data, tmp_path/'m', tmp_path/'run'))
    assert rc == 2 and 'cannot be loaded as an image-text-to-text model' in err


def test_nan_names_the_record(data, tmp_path):
    torch.manual_seed(0)
    vlm, proc = build_llava()
    with torch.no_grad(): vlm.model.language_model.layers[1].self_attn.o_proj.weight[0, 0] = float('nan')
    first = json.loads(data.read_text())[A.plan_batches(json.loads(data.read_text()), 2)[0][0]]
    with pytest.raises(CoincideError, match=rf"record \d+ \(id '{first['id']}'\): the model produced NaN or inf"):
        A.extract(data, data.parent/'images', (vlm.eval(), proc), LAYERS, tmp_path/'run', batch_size=2)


def test_empty_text_span_gives_zero_text_block(llava, tmp_path):
    empty = {'id': 'e', 'image': 'ok.png', 'conversations': [turn('human', '<image>'), turn('gpt', '')]}
    data = _records(tmp_path, [GOOD, empty])
    E = np.load(A.extract(data, tmp_path/'images', llava, LAYERS, tmp_path/'run', batch_size=2)).astype(np.float32)
    blocks = E.reshape(2, len(LAYERS), 2, -1)
    assert (blocks[1, :, 1] == 0).all() and (np.linalg.norm(blocks[1, :, 0], axis=-1) > 0).all()
    np.testing.assert_allclose(np.linalg.norm(E, axis=1), 1, atol=2e-3)


def test_bfloat16_close_to_float32(cli, llava, data, tmp_path):
    "bfloat16 extraction stays within 0.03 of float32. It runs natively: torch's CPU bfloat16 kernels need AVX-512, which the test bed's portable kernels (set for this test process) switch off."
    cpuinfo = Path('/proc/cpuinfo')
    if not cpuinfo.is_file() or 'avx512f' not in cpuinfo.read_text(): pytest.skip("torch's CPU bfloat16 kernels need AVX-512 (read from /proc/cpuinfo)")
    f32 = np.load(A.extract(data, data.parent/'images', llava, LAYERS, tmp_path/'f32', batch_size=4)).astype(np.float32)
    native = {k: v for k, v in os.environ.items() if k not in PORTABLE_ENV}
    res = cli('extract', '--data', data, '--images', data.parent/'images', '--model', llava, '--layers', *LAYERS, '--out', tmp_path/'b16',
              '--batch-size', 4, '--num-workers', 0, '--dtype', 'bfloat16', env=native)
    assert res.returncode == 0, res.stderr[-2000:]
    b16 = np.load(tmp_path/'b16'/'embeddings.npy').astype(np.float32)
    assert np.isfinite(b16).all()
    np.testing.assert_allclose(b16, f32, atol=0.03)
    assert json.loads((tmp_path/'b16'/'extract.manifest.json').read_text())['params']['dtype'] == 'bfloat16'


def test_stops_after_last_chosen_layer(llava, data, tmp_path, monkeypatch):
    vlm, proc = A.load_reference(llava)
    ran = []
    for k, layer in enumerate(A.decoder_layers(vlm)): layer.register_forward_hook(lambda *a, k=k: ran.append(k))
    A.extract(data, data.parent/'images', (vlm, proc), LAYERS, tmp_path/'run', batch_size=8)
    assert sorted(set(ran)) == [0, 1]          # layer 2 starts (its o_proj is hooked) but never returns; layer 3 never runs


def test_torchrun_two_processes_match_one(main, llava, data, tmp_path):
    "`torchrun --nproc_per_node 2 coincide extract` as the notebook documents it: each rank is shard RANK of WORLD_SIZE, the last merges."
    assert main(*args(data, llava, tmp_path/'one'))[0] == 0
    bin_dir = Path(sys.executable).parent
    cmd = [bin_dir/'torchrun', '--standalone', '--nproc_per_node', 2, bin_dir/'coincide', *args(data, llava, tmp_path/'two')]
    res = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path/'two'/'embeddings.npy').read_bytes() == (tmp_path/'one'/'embeddings.npy').read_bytes()
    assert json.loads((tmp_path/'two'/'extract.manifest.json').read_text())['params']['shards'] == 2
    assert not (tmp_path/'two'/'parts').exists()
