"""Samples/s of `coincide.activations.extract` against a plain full forward pass with output_hidden_states.

Both read the same batches through the same DataLoader and processor, at the same batch size, on a
random LLaVA built from configs (CLIP tower, Llama decoder, nothing downloaded). `extract` hooks the
chosen layers' o_proj, stops after the last of them and writes float16 rows to disk; the baseline
runs every layer and the LM head and returns all hidden states. Prints both rates, their ratio and
peak memory. Each is timed `--repeats` times, alternately, and the best time of each is kept. Run by hand:

    python bench/bench_extract.py                       # CPU, 24-layer decoder of width 64
    python bench/bench_extract.py --device cuda --dtype bfloat16 --hidden 1024 --n 512 --batch-size 32

`--model interleave-0.5b` or `--model smolvlm-256m` instead builds, from the published configurations written out
below (nothing is downloaded), a randomly initialised model of the same class and sizes as
`llava-hf/llava-interleave-qwen-0.5b-hf` or `HuggingFaceTB/SmolVLM-256M-Instruct`, with a byte-level BPE
tokenizer trained offline (its ids are few, but the embedding and LM head keep the published vocabulary size),
and records with 640 x 480 images (COCO's usual size, most of LLaVA-665K). Peak memory is then measured per
phase (the kernel's peak RSS, reset before each phase through /proc/self/clear_refs); `--json PATH` adds the
result to a JSON file keyed by model:

    python bench/bench_extract.py --model interleave-0.5b --n 4 --batch-size 2 --repeats 2 --json bench/results/extract.json
    python bench/bench_extract.py --model smolvlm-256m --n 3 --batch-size 2 --repeats 1 --layers 3 8 13 18 23 --json bench/results/extract.json

What the ratio can be: `extract` stops after the last chosen layer and skips the LM head, while the vision tower,
the processor and the layers below the last chosen one cost the same in both. With the paper's layers (last 19 of
24) the saving is at most the top 4 decoder layers plus the LM head; on the tiny model (24 layers of width 64,
vocabulary 400) about 24/20 = 1.2x of the forward pass, less `extract`'s fixed costs (hashing, manifest, writing rows).
On a shared CPU, pass `--threads 1`: with two torch threads and other jobs running, OpenMP's waiting between the tiny
model's many small operations dominates (measured here: the same forward 10-15 times slower), and the ratio swings
from below 1 to above 3 from one run to the next.
"""
import argparse, json, os, platform, resource, sys, tempfile, time
from pathlib import Path
import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models as tk_models, pre_tokenizers, trainers
from transformers import (CLIPVisionConfig, Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor, LlamaConfig,
                          LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast, Qwen2Config,
                          SiglipVisionConfig)
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

import coincide.activations as A
from coincide.activations import PAPER_LAYERS
from coincide.data import load_records


SENTENCES = ['What is in the image? Describe it in detail.', 'A red square on a blue background.', 'USER: ASSISTANT: user assistant system']


def bpe_tokenizer(specials:list, **roles) -> PreTrainedTokenizerFast:
    "A byte-level BPE tokenizer trained offline on a few sentences, with `specials` as special tokens."
    t = Tokenizer(tk_models.BPE()); t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False); t.decoder = decoders.ByteLevel()
    t.train_from_iterator(SENTENCES * 3, trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=t, **roles)


CHATML = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
          "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
          "<|im_end|>\n{% endfor %}")
SMOL_TEMPLATE = ("<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}:{% for c in m['content'] %}"
                 "{% if c['type'] == 'image' %}<image>{% else %} {{ c['text'] }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}")


def build_interleave_05b():
    "llava-hf/llava-interleave-qwen-0.5b-hf's published config.json: SigLIP so400m-style tower at 384 px (27 x 27 = 729 image tokens), Qwen1.5-0.5B decoder (24 layers, width 1024)."
    tok = bpe_tokenizer(['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<image>'], eos_token='<|im_end|>', pad_token='<|endoftext|>')
    proc = LlavaProcessor(image_processor=SiglipImageProcessorPil(size={'height': 384, 'width': 384}), tokenizer=tok, patch_size=14,
                          vision_feature_select_strategy='full', num_additional_image_tokens=0, chat_template=CHATML)
    cfg = LlavaConfig(vision_config=SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16,
                                                       image_size=384, patch_size=14, hidden_act='gelu_pytorch_tanh', layer_norm_eps=1e-6,
                                                       vision_use_head=False),
                      text_config=Qwen2Config(vocab_size=152000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=24,
                                              num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=32768, rope_theta=1e6,
                                              tie_word_embeddings=True, pad_token_id=tok.pad_token_id),
                      image_token_id=tok.convert_tokens_to_ids('<image>'), projector_hidden_act='gelu', vision_feature_layer=-1,
                      vision_feature_select_strategy='full', tie_word_embeddings=True)
    return LlavaForConditionalGeneration(cfg), proc


def build_smolvlm_256m():
    "HuggingFaceTB/SmolVLM-256M-Instruct's published config: SigLIP base patch-16/512 tower, pixel shuffle 4 (64 tokens per 512 px tile, images split into tiles up to 2048 px plus a global view), SmolLM2-135M decoder (30 layers, width 576)."
    tok = bpe_tokenizer(['<|endoftext|>', '<|im_start|>', '<fake_token_around_image>', '<image>', '<end_of_utterance>', '<global-img>'],
                        bos_token='<|im_start|>', eos_token='<end_of_utterance>', pad_token='<|endoftext|>')
    ip = Idefics3ImageProcessorPil(size={'longest_edge': 4 * 512}, max_image_size={'longest_edge': 512}, do_image_splitting=True)
    proc = Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=64, chat_template=SMOL_TEMPLATE)
    cfg = Idefics3Config(text_config=dict(model_type='llama', vocab_size=49280, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                          num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                                          rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, pad_token_id=tok.pad_token_id),
                         vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                                            image_size=512, patch_size=16),
                         scale_factor=4, image_token_id=tok.convert_tokens_to_ids('<image>'), tie_word_embeddings=True)
    return Idefics3ForConditionalGeneration(cfg), proc


REAL = {'interleave-0.5b': ('llava-hf/llava-interleave-qwen-0.5b-hf', build_interleave_05b),
        'smolvlm-256m': ('HuggingFaceTB/SmolVLM-256M-Instruct', build_smolvlm_256m)}


def reset_peak():
    "Reset this process' peak resident memory (Linux: /proc/self/clear_refs), so that the next phase's peak can be read."
    try:
        with open('/proc/self/clear_refs', 'w') as f: f.write('5')
    except OSError: pass


def peak_mib() -> float:
    "Peak resident memory of this process since the last `reset_peak`, in MiB (VmHWM)."
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'): return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_avg() -> list: return [round(v, 2) for v in os.getloadavg()]


def build(depth:int, hidden:int, image_size:int):
    "A random LLaVA: CLIP tower with (image_size/4)^2 image tokens, a Llama decoder of `depth` layers."
    t = Tokenizer(tk_models.BPE()); t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False); t.decoder = decoders.ByteLevel()
    t.train_from_iterator(['What is in the image? Describe it in detail.', 'A red square on a blue background.', 'USER: ASSISTANT:'] * 3,
                          trainers.BpeTrainer(vocab_size=400, special_tokens=['<pad>', '<s>', '</s>', '<image>'], show_progress=False,
                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=t, bos_token='<s>', eos_token='</s>', pad_token='<pad>')
    proc = LlavaProcessor(image_processor=LlavaImageProcessorPil(size={'shortest_edge': image_size}, crop_size={'height': image_size, 'width': image_size}),
                          tokenizer=tok, patch_size=4, vision_feature_select_strategy='default', num_additional_image_tokens=1)
    torch.manual_seed(0)
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                                     image_size=image_size, patch_size=4),
                      text_config=LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=depth,
                                              num_attention_heads=max(2, hidden // 64), max_position_embeddings=2048, pad_token_id=0),
                      image_token_id=tok.convert_tokens_to_ids('<image>'))
    return LlavaForConditionalGeneration(cfg).eval(), proc


def make_data(root:Path, n:int, image_size:int, width:int|None=None) -> Path:
    "n records, one in eight text-only, with conversations of varied length; images (image_size + 8) x `width` (default image_size)."
    (root/'images').mkdir(parents=True)
    rng, recs = np.random.default_rng(0), []
    for i in range(n):
        q = 'What is in the image? ' + 'Describe it in detail. ' * int(rng.integers(0, 12))
        conv = [{'from': 'human', 'value': q}, {'from': 'gpt', 'value': 'A red square on a blue background. ' * int(rng.integers(1, 8))}]
        rec = {'id': i, 'conversations': conv}
        if i % 8:
            Image.fromarray(rng.integers(0, 255, (image_size + 8, width or image_size, 3), dtype=np.uint8)).save(root/'images'/f'{i}.png')
            conv[0]['value'] = '<image>\n' + q; rec['image'] = f'{i}.png'
        recs.append(rec)
    (root/'train.json').write_text(json.dumps(recs))
    return root/'train.json'


def clock():
    "(wall seconds, CPU seconds of this process): on a shared CPU the CPU time is the steadier measure."
    return np.array([time.perf_counter(), time.process_time()])


def baseline(data:Path, vlm, proc, batch_size:int, device, dtype, num_workers:int, stats:dict|None=None) -> np.ndarray:
    "(wall, CPU) seconds for a full forward pass with output_hidden_states over the same batches; `stats` gets token counts."
    records = load_records(data)
    loader = A._shard_loader(records, data.parent/'images', proc, A.plan_batches(records, batch_size), num_workers)
    image_id, tokens, image_tokens = A.image_token_id(vlm, proc), [], []
    t0 = clock()
    for batch in loader:
        inputs = {k: (v.to(device, dtype) if torch.is_floating_point(v) else v.to(device)) for k, v in batch['inputs'].items()}
        with torch.inference_mode(): out = vlm(**inputs, output_hidden_states=True, use_cache=False)
        _ = [h.float().mean().item() for h in out.hidden_states[:1]]     # make sure the work is done (GPU sync)
        ids, att = batch['inputs']['input_ids'], batch['inputs']['attention_mask'].bool()
        tokens += att.sum(1).tolist(); image_tokens += ((ids == image_id) & att).sum(1).tolist()
    if device.type == 'cuda': torch.cuda.synchronize()
    if stats is not None: stats.update(tokens_per_record=float(np.mean(tokens)), image_tokens_per_image_record=float(np.mean([t for t in image_tokens if t])))
    return clock() - t0


def measure(vlm, proc, data:Path, tmp:Path, a, dev, dt) -> dict:
    "Best (wall, CPU) times and peak RSS of the baseline and of `extract`, alternated `a.repeats` times."
    t_base, t_ours, peaks, stats = [], [], {'baseline': [], 'extract': []}, {}
    for r in range(a.repeats):                   # alternate the two, keep the best of each (the machine may be shared)
        reset_peak(); t_base.append(baseline(data, vlm, proc, a.batch_size, dev, dt, a.num_workers, stats)); peaks['baseline'].append(peak_mib())
        reset_peak(); t0 = clock()
        A.extract(data, data.parent/'images', (vlm, proc), a.layers, tmp/f'run{r}', a.batch_size, a.device, a.dtype, num_workers=a.num_workers)
        t_ours.append(clock() - t0); peaks['extract'].append(peak_mib())
    return {'t_base': np.min(t_base, 0), 't_ours': np.min(t_ours, 0), 'all_base_wall_s': [round(t[0], 2) for t in t_base],
            'all_extract_wall_s': [round(t[0], 2) for t in t_ours], 'peak_rss_mib': {k: round(max(v), 1) for k, v in peaks.items()}, **stats}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default=None, choices=list(REAL), help='a randomly initialised model of a published size (default: the tiny LLaVA)')
    p.add_argument('--n', type=int, default=32); p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--depth', type=int, default=24); p.add_argument('--hidden', type=int, default=64)
    p.add_argument('--layers', type=int, nargs='+', default=list(PAPER_LAYERS)); p.add_argument('--image-size', type=int, default=32)
    p.add_argument('--device', default='cpu'); p.add_argument('--dtype', default=None); p.add_argument('--num-workers', type=int, default=0)
    p.add_argument('--repeats', type=int, default=3); p.add_argument('--json', default=None, help='add the result to this JSON file')
    p.add_argument('--threads', type=int, default=None, help='torch threads (default: torch\'s own, the number of cores)')
    a = p.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    dev = torch.device(a.device); dt = A.resolve_dtype(a.dtype, dev)
    torch.manual_seed(0)
    t_build = time.perf_counter()
    vlm, proc = REAL[a.model][1]() if a.model else build(a.depth, a.hidden, a.image_size)
    vlm = vlm.to(dev, dt).eval(); t_build = time.perf_counter() - t_build
    depth = len(A.decoder_layers(vlm)); hidden = A.attention_projections(vlm, a.layers)[0].out_features
    params = sum(q.numel() for q in vlm.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_data(tmp/'data', a.n, 472, 640) if a.model else make_data(tmp/'data', a.n, a.image_size)
        warm = make_data(tmp/'warm', 2, 472, 640) if a.model else data
        load_before = load_avg()
        baseline(warm, vlm, proc, a.batch_size, dev, dt, a.num_workers)                  # warm-up
        m = measure(vlm, proc, data, tmp, a, dev, dt)
    t_base, t_ours = m['t_base'], m['t_ours']
    name = a.model or f'tiny-llava-{depth}x{hidden}, {torch.get_num_threads()} thread(s)'
    print(f"{name} ({params / 1e6:.0f}M parameters, built in {t_build:.0f} s): device {dev} {dt}, decoder {depth} x {hidden}, layers {a.layers}, "
          f"{a.n} records, batch {a.batch_size}, best of {a.repeats}; load average {load_before} before, {load_avg()} after")
    for k, what in enumerate(['wall clock', 'CPU time' + (' (host only)' if dev.type == 'cuda' else '')]):
        print(f"{what:>22}: full forward + output_hidden_states {a.n / t_base[k]:7.3f} samples/s | coincide extract (hooks, early stop, "
              f"rows written) {a.n / t_ours[k]:7.3f} samples/s | ratio {t_base[k] / t_ours[k]:.2f}x")
    print(f"peak RSS per phase (MiB): {m['peak_rss_mib']}" + (f", peak GPU {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if dev.type == 'cuda' else ''))
    if a.json:
        out = Path(a.json); res = json.loads(out.read_text()) if out.exists() else {}
        res[name] = {'command': 'python ' + ' '.join(sys.argv), 'published_model': REAL[a.model][0] if a.model else None,
                     'parameters_millions': round(params / 1e6, 1), 'decoder_layers': depth, 'hidden': hidden, 'layers': a.layers,
                     'records': a.n, 'batch_size': a.batch_size, 'repeats': a.repeats, 'device': str(dev), 'dtype': str(dt).replace('torch.', ''),
                     'tokens_per_record': round(m['tokens_per_record'], 1), 'image_tokens_per_image_record': round(m['image_tokens_per_image_record'], 1),
                     'records_per_s': {'full_forward_hidden_states': {'wall': round(a.n / t_base[0], 4), 'cpu': round(a.n / t_base[1], 4)},
                                       'coincide_extract': {'wall': round(a.n / t_ours[0], 4), 'cpu': round(a.n / t_ours[1], 4)}},
                     'speedup': {'wall': round(t_base[0] / t_ours[0], 3), 'cpu': round(t_base[1] / t_ours[1], 3)},
                     'wall_s_each_repeat': {'full_forward_hidden_states': m['all_base_wall_s'], 'coincide_extract': m['all_extract_wall_s']},
                     'peak_rss_mib': m['peak_rss_mib'], 'torch_threads': torch.get_num_threads(), 'cpus': os.cpu_count(),
                     'machine': platform.processor() or platform.machine(), 'load_average_before_after': [load_before, load_avg()],
                     'measured': time.strftime('%Y-%m-%d %H:%M')}
        out.parent.mkdir(parents=True, exist_ok=True); out.write_text(json.dumps(res, indent=1) + '\n')


if __name__ == '__main__':
    main()
