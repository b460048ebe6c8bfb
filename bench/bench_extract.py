"""Samples/s of `coincide.activations.extract` against a plain full forward pass with output_hidden_states.

Both read the same batches through the same DataLoader and processor, at the same batch size, on a
random LLaVA built from configs (CLIP tower, Llama decoder, nothing downloaded). `extract` hooks the
chosen layers' o_proj, stops after the last of them and writes float16 rows to disk; the baseline
runs every layer and the LM head and returns all hidden states. Prints both rates, their ratio and
peak memory. Each is timed `--repeats` times, alternately, and the best time of each is kept. Run by hand:

    python bench/bench_extract.py                       # CPU, 24-layer decoder of width 64
    python bench/bench_extract.py --device cuda --dtype bfloat16 --hidden 1024 --n 512 --batch-size 32
"""
import argparse, json, resource, tempfile, time
from pathlib import Path
import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models as tk_models, pre_tokenizers, trainers
from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor,
                          PreTrainedTokenizerFast)
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

import coincide.activations as A
from coincide.data import load_records


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


def make_data(root:Path, n:int, image_size:int) -> Path:
    "n records, one in eight text-only, with conversations of varied length."
    (root/'images').mkdir(parents=True)
    rng, recs = np.random.default_rng(0), []
    for i in range(n):
        q = 'What is in the image? ' + 'Describe it in detail. ' * int(rng.integers(0, 12))
        conv = [{'from': 'human', 'value': q}, {'from': 'gpt', 'value': 'A red square on a blue background. ' * int(rng.integers(1, 8))}]
        rec = {'id': i, 'conversations': conv}
        if i % 8:
            Image.fromarray(rng.integers(0, 255, (image_size + 8, image_size, 3), dtype=np.uint8)).save(root/'images'/f'{i}.png')
            conv[0]['value'] = '<image>\n' + q; rec['image'] = f'{i}.png'
        recs.append(rec)
    (root/'train.json').write_text(json.dumps(recs))
    return root/'train.json'


def clock():
    "(wall seconds, CPU seconds of this process): on a shared CPU the CPU time is the steadier measure."
    return np.array([time.perf_counter(), time.process_time()])


def baseline(data:Path, vlm, proc, batch_size:int, device, dtype, num_workers:int) -> np.ndarray:
    "(wall, CPU) seconds for a full forward pass with output_hidden_states over the same batches."
    records = load_records(data)
    loader = A._shard_loader(records, data.parent/'images', proc, A.plan_batches(records, batch_size), num_workers)
    t0 = clock()
    for batch in loader:
        inputs = {k: (v.to(device, dtype) if torch.is_floating_point(v) else v.to(device)) for k, v in batch['inputs'].items()}
        with torch.inference_mode(): out = vlm(**inputs, output_hidden_states=True, use_cache=False)
        _ = [h.float().mean().item() for h in out.hidden_states[:1]]     # make sure the work is done (GPU sync)
    if device.type == 'cuda': torch.cuda.synchronize()
    return clock() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--n', type=int, default=32); p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--depth', type=int, default=24); p.add_argument('--hidden', type=int, default=64)
    p.add_argument('--layers', type=int, nargs='+', default=[3, 7, 11, 15, 19]); p.add_argument('--image-size', type=int, default=32)
    p.add_argument('--device', default='cpu'); p.add_argument('--dtype', default=None); p.add_argument('--num-workers', type=int, default=0)
    p.add_argument('--repeats', type=int, default=3)
    a = p.parse_args()
    dev = torch.device(a.device); dt = A.resolve_dtype(a.dtype, dev)
    vlm, proc = build(a.depth, a.hidden, a.image_size)
    vlm = vlm.to(dev, dt)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp)/'data', a.n, a.image_size)
        baseline(data, vlm, proc, a.batch_size, dev, dt, a.num_workers)                  # warm-up
        t_base, t_ours = [], []
        for r in range(a.repeats):                   # alternate the two, keep the best of each (the machine may be shared)
            t_base.append(baseline(data, vlm, proc, a.batch_size, dev, dt, a.num_workers))
            t0 = clock()
            A.extract(data, data.parent/'images', (vlm, proc), a.layers, Path(tmp)/f'run{r}', a.batch_size, a.device, a.dtype,
                      num_workers=a.num_workers)
            t_ours.append(clock() - t0)
        t_base, t_ours = np.min(t_base, 0), np.min(t_ours, 0)                             # (wall, CPU), best of each
    print(f"device {dev} {dt}, decoder {a.depth} x {a.hidden}, layers {a.layers}, {a.n} records, batch {a.batch_size}, best of {a.repeats}")
    for k, what in enumerate(['wall clock', 'CPU time' + (' (host only)' if dev.type == 'cuda' else '')]):
        print(f"{what:>22}: full forward + output_hidden_states {a.n / t_base[k]:7.1f} samples/s | coincide extract (hooks, early stop, "
              f"rows written) {a.n / t_ours[k]:7.1f} samples/s | ratio {t_base[k] / t_ours[k]:.2f}x")
    print(f"peak host RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB" +
          (f", peak GPU {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if dev.type == 'cuda' else ''))


if __name__ == '__main__':
    main()
