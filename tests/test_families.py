"""`coincide.activations` on a tiny random model of every supported VLM family, checked against an
independent computation (hooks on `o_proj`, one record at a time, full forward pass).

Each family is built offline: a byte-level BPE tokenizer trained with `tokenizers` on a few
sentences and wrapped with the family's special tokens, the family's PIL image processor at small
sizes, and the family's config classes at tiny sizes. LLaVA, LLaVA-interleave and Idefics3 are
saved to a folder and loaded by path (AutoProcessor + AutoModelForImageTextToText); Qwen2-VL and
Qwen2.5-VL are passed in memory because their processors need a video processor, and video
processors need torchvision, which this environment lacks.
"""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest, torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models as tk_models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from transformers.processing_utils import ProcessorMixin

import coincide.activations as A
from coincide.activations import extract

LAYERS = [1, 2]          # of 4: the forward pass stops after layer 2
SENTENCES = ['What is in the image?', 'A red square on a blue background.', 'Describe the picture in detail.',
             'There are two cats sitting on a sofa.', 'How many people are there?', 'USER: ASSISTANT: user assistant system']


def tokenizer(specials, **roles):
    "A byte-level BPE tokenizer trained offline on SENTENCES, with `specials` as special tokens."
    t = Tokenizer(tk_models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False); t.decoder = decoders.ByteLevel()
    t.train_from_iterator(SENTENCES * 3, trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False,
                                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=t, **roles)


def text_cfg(tok, **kw):
    return dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512, **kw)


QWEN_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}{% else %}"
                 "{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
                 "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}")
INTERLEAVE_TEMPLATE = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                       "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
                       "<|im_end|>\n{% endfor %}")
IDEFICS_TEMPLATE = ("<|begin_of_text|>{% for m in messages %}{{ m['role'] | capitalize }}:{% for c in m['content'] %}"
                    "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}")


def build_llava():
    "LLaVA-1.5 style: CLIP tower, Llama decoder, no chat template (LLaVA v1 prompts)."
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
    tok = tokenizer(['<pad>', '<s>', '</s>', '<image>'], bos_token='<s>', eos_token='</s>', pad_token='<pad>')
    proc = LlavaProcessor(image_processor=LlavaImageProcessorPil(size={'shortest_edge': 16}, crop_size={'height': 16, 'width': 16}),
                          tokenizer=tok, patch_size=4, vision_feature_select_strategy='default', num_additional_image_tokens=1)
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                     image_size=16, patch_size=4),
                      text_config=LlamaConfig(**text_cfg(tok, pad_token_id=0)), image_token_id=tok.convert_tokens_to_ids('<image>'))
    return LlavaForConditionalGeneration(cfg), proc


def build_llava_interleave():
    "LLaVA-interleave / TinyLLaVA-HF style: SigLIP tower, Qwen2 decoder, a chat template with a system prompt."
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, Qwen2Config, SiglipVisionConfig
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
    tok = tokenizer(['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<image>'], eos_token='<|im_end|>', pad_token='<|endoftext|>')
    proc = LlavaProcessor(image_processor=SiglipImageProcessorPil(size={'height': 16, 'width': 16}), tokenizer=tok, patch_size=4,
                          vision_feature_select_strategy='full', num_additional_image_tokens=0, chat_template=INTERLEAVE_TEMPLATE)
    cfg = LlavaConfig(vision_config=SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                       image_size=16, patch_size=4),
                      text_config=Qwen2Config(**text_cfg(tok)), image_token_id=tok.convert_tokens_to_ids('<image>'),
                      vision_feature_select_strategy='full')
    return LlavaForConditionalGeneration(cfg), proc


def _without_video_processor(cls, **kw):
    "Build a Qwen-VL processor with no video processor (its base class needs torchvision, not installed here)."
    orig = ProcessorMixin.check_argument_for_proper_class
    ProcessorMixin.check_argument_for_proper_class = lambda self, name, arg: None if arg is None else orig(self, name, arg)
    try: return cls(video_processor=None, **kw)
    finally: ProcessorMixin.check_argument_for_proper_class = orig


QWEN_SPECIALS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<|vision_start|>', '<|vision_end|>', '<|image_pad|>', '<|video_pad|>']


def _qwen_parts():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    tok = tokenizer(QWEN_SPECIALS, eos_token='<|im_end|>', pad_token='<|endoftext|>')
    ip = Qwen2VLImageProcessorPil(min_pixels=8 * 8 * 4, max_pixels=16 * 16 * 4, patch_size=4, temporal_patch_size=2, merge_size=2)
    ids = {f'{k}_token_id': tok.convert_tokens_to_ids(f'<|{k}|>') for k in ('vision_start', 'vision_end')}
    ids |= {'image_token_id': tok.convert_tokens_to_ids('<|image_pad|>'), 'video_token_id': tok.convert_tokens_to_ids('<|video_pad|>')}
    rope = {'rope_type': 'default', 'rope_theta': 10000.0, 'mrope_section': [1, 1, 2]}
    return tok, ip, ids, rope


def build_qwen2_vl():
    "Qwen2-VL: its own ViT with patch merging, M-RoPE decoder, ChatML template."
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    tok, ip, ids, rope = _qwen_parts()
    cfg = Qwen2VLConfig(text_config=text_cfg(tok, rope_parameters=rope),
                        vision_config=dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2, patch_size=4, spatial_merge_size=2,
                                           temporal_patch_size=2, mlp_ratio=2), **ids)
    return Qwen2VLForConditionalGeneration(cfg), _without_video_processor(Qwen2VLProcessor, image_processor=ip, tokenizer=tok, chat_template=QWEN_TEMPLATE)


def build_qwen2_5_vl():
    "Qwen2.5-VL: window-attention ViT, M-RoPE decoder, ChatML template."
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    tok, ip, ids, rope = _qwen_parts()
    cfg = Qwen2_5_VLConfig(text_config=text_cfg(tok, rope_parameters=rope),
                           vision_config=dict(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=4, spatial_merge_size=2,
                                              temporal_patch_size=2, window_size=16, out_hidden_size=32, fullatt_block_indexes=[1]), **ids)
    return Qwen2_5_VLForConditionalGeneration(cfg), _without_video_processor(Qwen2_5_VLProcessor, image_processor=ip, tokenizer=tok, chat_template=QWEN_TEMPLATE)


def build_idefics3():
    "Idefics3 / SmolVLM: SigLIP tower with pixel shuffle, Llama decoder, <fake_token_around_image> scaffolding."
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    tok = tokenizer(['<|endoftext|>', '<|begin_of_text|>', '<fake_token_around_image>', '<image>', '<end_of_utterance>', '<global-img>'],
                    bos_token='<|begin_of_text|>', eos_token='<end_of_utterance>', pad_token='<|endoftext|>')
    ip = Idefics3ImageProcessorPil(size={'longest_edge': 16}, max_image_size={'longest_edge': 16}, do_image_splitting=False)
    proc = Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=4, chat_template=IDEFICS_TEMPLATE)
    cfg = Idefics3Config(text_config=dict(model_type='llama', pad_token_id=tok.pad_token_id, **text_cfg(tok)),
                         vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=4),
                         scale_factor=2, image_token_id=tok.convert_tokens_to_ids('<image>'))
    return Idefics3ForConditionalGeneration(cfg), proc


BUILDERS = {'llava': build_llava, 'llava_interleave': build_llava_interleave, 'qwen2_vl': build_qwen2_vl,
            'qwen2_5_vl': build_qwen2_5_vl, 'idefics3': build_idefics3}
ON_DISK = ('llava', 'llava_interleave', 'idefics3')


def model_spec(family:str, cache:Path):
    "What `extract(model=...)` takes for `family`: a saved folder, or an in-memory (model, processor) pair."
    torch.manual_seed(0)
    if family in ON_DISK:
        path = Path(cache)/family
        if not (path/'config.json').exists():
            vlm, proc = BUILDERS[family]()
            vlm.save_pretrained(path); proc.save_pretrained(path)
        return str(path)
    vlm, proc = BUILDERS[family]()
    return vlm.eval(), proc


def turn(who, text): return {'from': who, 'value': text}


def make_records(root:Path, n_image:int=6, n_text:int=2) -> Path:
    "`n_image` records with images (both <image> placements, some multi-turn) and `n_text` text-only ones; returns train.json."
    (root/'images'/'coco').mkdir(parents=True, exist_ok=True)
    colours = ['red', 'blue', 'green', 'yellow', 'purple', 'orange', 'white', 'black']
    rng, recs = np.random.default_rng(0), []
    for i in range(n_image):
        c = colours[i % len(colours)]
        arr = (rng.random((20 + 3 * (i % 4), 24, 3)) * 80).astype(np.uint8) + np.array(Image.new('RGB', (1, 1), c)).astype(np.uint8) // 2
        Image.fromarray(arr).save(root/'images'/'coco'/f'{i}.png')
        q = 'What is in the image?' + ' Describe the picture in detail.' * (i % 3)
        first = f'<image>\n{q}' if i % 2 == 0 else f'{q}\n<image>'
        conv = [turn('human', first), turn('gpt', f'A {c} square on a blue background.')]
        if i % 3 == 1: conv += [turn('human', 'How many people are there?'), turn('gpt', 'There are two cats sitting on a sofa.')]
        recs.append({'id': f'img{i}', 'image': f'coco/{i}.png', 'conversations': conv})
    for i in range(n_text):
        recs.append({'id': f'txt{i}', 'conversations': [turn('human', 'Describe a sofa.' * (i + 1)), turn('gpt', 'There are two cats.')]})
    order = rng.permutation(len(recs))                       # interleave image and text-only records in the file
    (root/'train.json').write_text(json.dumps([recs[k] for k in order]))
    return root/'train.json'


# ---------------------------------------------------------------- the independent computation

def _messages(rec):
    "Chat messages of a record, written out by hand (image first if <image> leads the turn)."
    msgs = []
    for t in rec['conversations']:
        v = t['value']
        if '<image>' in v:
            q = v.replace('<image>', '').strip()
            content = [{'type': 'image'}, {'type': 'text', 'text': q}] if v.startswith('<image>') else [{'type': 'text', 'text': q}, {'type': 'image'}]
        else: content = [{'type': 'text', 'text': v}]
        msgs.append({'role': 'user' if t['from'] == 'human' else 'assistant', 'content': content})
    return msgs


def _prompt(rec, proc):
    if getattr(proc, 'chat_template', None): return proc.apply_chat_template(_messages(rec), tokenize=False)
    parts = []
    for t in rec['conversations']:
        if t['from'] == 'human':
            v = t['value']
            if '<image>' in v:
                q = v.replace('<image>', '').strip()
                v = f'<image>\n{q}' if t['value'].startswith('<image>') else f'{q}\n<image>'
            parts.append(f'USER: {v}')
        else: parts.append(f"ASSISTANT: {t['value']}</s>")
    return ' '.join(parts)


def reference_features(vlm, proc, rec, images_dir, layers):
    "COINCIDE features of one record, computed the slow way: batch of one, full forward, hooks on o_proj."
    prompt = _prompt(rec, proc)
    img = [Image.open(images_dir/rec['image']).convert('RGB')] if rec.get('image') else None
    enc = proc(text=[prompt], images=img, return_tensors='pt')
    ids = enc['input_ids'][0]
    blocks = [m for n, m in vlm.named_modules() if n.endswith('self_attn.o_proj') and 'vision' not in n and 'visual' not in n]
    outs = {}
    hs = [blocks[l].register_forward_hook(lambda m, i, o, l=l: outs.__setitem__(l, o[0].float())) for l in layers]
    with torch.no_grad(): vlm(**enc)
    for h in hs: h.remove()
    # conversation tokens: decode the expanded ids, find each turn's text, map characters to tokens
    text = proc.tokenizer.decode(ids, skip_special_tokens=False)
    enc2 = proc.tokenizer(text, add_special_tokens=False)
    offset = len(ids) - len(enc2['input_ids'])                  # a BOS the processor adds
    assert enc2['input_ids'] == ids[offset:].tolist()
    conv, pos = np.zeros(len(ids), bool), 0
    for t in rec['conversations']:
        for piece in t['value'].split('<image>'):
            piece = piece.strip()
            if not piece: continue
            at = text.index(piece, pos); pos = at + len(piece)
            for c in range(at, pos):
                k = enc2.char_to_token(c)
                if k is not None: conv[k + offset] = True
    image = (ids == vlm.config.image_token_id).numpy()
    conv &= ~image
    L, feats = len(layers), []
    for l in layers:
        for mask in (image, conv):
            v = torch.tanh(outs[l][torch.from_numpy(mask)].mean(0)) if mask.any() else torch.zeros(outs[l].shape[-1])
            feats.append((v / v.norm() if v.norm() > 0 else v) / np.sqrt(2 * L))
    f = torch.cat(feats).numpy()
    if not (image.any() and conv.any()): f = f / np.linalg.norm(f)
    return f


# ---------------------------------------------------------------- fixtures and tests

FAMILIES = list(BUILDERS)


@pytest.fixture(scope='module')
def cache(tmp_path_factory): return tmp_path_factory.mktemp('models')


@pytest.fixture(scope='module')
def data(tmp_path_factory): return make_records(tmp_path_factory.mktemp('data'))


@pytest.fixture(params=FAMILIES)
def family(request): return request.param


def loaded(spec):
    if isinstance(spec, tuple): return spec
    from transformers import AutoModelForImageTextToText, AutoProcessor
    return AutoModelForImageTextToText.from_pretrained(spec).eval(), AutoProcessor.from_pretrained(spec)


def test_matches_independent_hooks(family, cache, data, tmp_path):
    spec = model_spec(family, cache)
    out = extract(data, data.parent/'images', spec, LAYERS, tmp_path/'run', batch_size=3, device='cpu')
    E = np.load(out)
    vlm, proc = loaded(spec)
    recs = json.loads(data.read_text())
    ref = np.stack([reference_features(vlm, proc, r, data.parent/'images', LAYERS) for r in recs])
    assert E.shape == ref.shape == (len(recs), 2 * len(LAYERS) * 32) and E.dtype == np.float16
    np.testing.assert_allclose(E.astype(np.float32), ref, atol=1e-3)
    layout = json.loads((tmp_path/'run'/'layout.json').read_text())['blocks']
    assert [(b['layer'], b['modality']) for b in layout] == [(1, 'vision'), (1, 'text'), (2, 'vision'), (2, 'text')]


def test_block_norms(family, cache, data, tmp_path):
    E = np.load(extract(data, data.parent/'images', model_spec(family, cache), LAYERS, tmp_path/'run', batch_size=4)).astype(np.float32)
    recs = json.loads(data.read_text())
    has_image = np.array([r.get('image') is not None for r in recs])
    blocks = np.linalg.norm(E.reshape(len(E), 2 * len(LAYERS), -1), axis=-1)             # (N, 2L)
    np.testing.assert_allclose(blocks[has_image], 1 / np.sqrt(2 * len(LAYERS)), atol=2e-3)
    assert (E.reshape(len(E), len(LAYERS), 2, -1)[~has_image, :, 0] == 0).all()          # text-only: zero vision blocks
    np.testing.assert_allclose(np.linalg.norm(E, axis=1), 1, atol=2e-3)


def test_two_runs_identical_bytes(family, cache, data, tmp_path):
    a = extract(data, data.parent/'images', model_spec(family, cache), LAYERS, tmp_path/'a', batch_size=3)
    b = extract(data, data.parent/'images', model_spec(family, cache), LAYERS, tmp_path/'b', batch_size=3)
    assert a.read_bytes() == b.read_bytes()


def test_shards_merge_to_single_process(family, cache, data, tmp_path):
    spec = model_spec(family, cache)
    one = extract(data, data.parent/'images', spec, LAYERS, tmp_path/'one', batch_size=2)
    assert extract(data, data.parent/'images', spec, LAYERS, tmp_path/'sh', batch_size=2, shard='1/2') is None
    assert not (tmp_path/'sh'/'embeddings.npy').exists()
    merged = extract(data, data.parent/'images', spec, LAYERS, tmp_path/'sh', batch_size=2, shard='0/2')
    assert merged.read_bytes() == one.read_bytes()
    assert json.loads((tmp_path/'sh'/'layout.json').read_text()) == json.loads((tmp_path/'one'/'layout.json').read_text())


DRIVER = """
import sys, time, json
sys.path.insert(0, {tests!r})
import coincide.activations as A
from test_families import model_spec
slow = A.batch_features
def batch_features(*a, **k):
    time.sleep(0.15); return slow(*a, **k)
A.batch_features = batch_features
A.extract({data!r}, {images!r}, model_spec({family!r}, {cache!r}), {layers!r}, {out!r}, batch_size=1)
"""


def run_killed_then_resumed(family, cache, data, out):
    "Start an extraction in a subprocess, SIGKILL it after a few batches, then rerun it to the end."
    code = DRIVER.format(tests=str(Path(__file__).parent), data=str(data), images=str(data.parent/'images'), family=family,
                         cache=str(cache), layers=LAYERS, out=str(out))
    proc = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    progress, t0 = out/'parts'/'part-0-of-1.progress.json', time.time()
    while time.time() - t0 < 120:
        if progress.exists() and json.loads(progress.read_text())['batches_done'] >= 3: break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL); proc.wait()
    done = json.loads(progress.read_text())['batches_done']
    assert 3 <= done < 8 and not (out/'embeddings.npy').exists()
    return done


# The resume logic does not depend on the family; by default only Qwen2-VL (in memory) is killed here, and
# LLaVA (from a folder) through the command line in test_activations.py; --runslow kills every family.
KILL_FAMILIES = [f if f == 'qwen2_vl' else pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES]


@pytest.mark.parametrize('fam', KILL_FAMILIES)
def test_killed_run_resumes_to_identical_bytes(fam, cache, data, tmp_path, monkeypatch):
    whole = extract(data, data.parent/'images', model_spec(fam, cache), LAYERS, tmp_path/'whole', batch_size=1)
    done = run_killed_then_resumed(fam, cache, data, tmp_path/'killed')
    calls, real = [], A.batch_features
    monkeypatch.setattr(A, 'batch_features', lambda *a, **k: calls.append(1) or real(*a, **k))
    resumed = extract(data, data.parent/'images', model_spec(fam, cache), LAYERS, tmp_path/'killed', batch_size=1)
    assert resumed.read_bytes() == whole.read_bytes()
    assert len(calls) == 8 - done                          # only the unfinished batches were computed
