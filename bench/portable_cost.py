"""What portable kernels cost, setting by setting: one training step of the demo's target model under each kernel setting.

    python bench/portable_cost.py [--rounds 3] [--steps 20]

Each setting runs in a fresh process (ATen's capability and MKL_CBWR are fixed when torch loads), the settings
interleaved round by round so that a busy machine slows them alike. Writes bench/results/portable_cost.json.
"""
import argparse, json, os, platform, subprocess, sys, time
from pathlib import Path
import numpy as np

SETTINGS = { # name -> (environment, oneDNN on)
    'native': ({}, True),
    'ATen AVX2': ({'ATEN_CPU_CAPABILITY': 'avx2'}, True),
    'MKL_CBWR=AVX2': ({'MKL_CBWR': 'AVX2'}, True),
    'MKL at AVX2, no CNR': ({'MKL_ENABLE_INSTRUCTIONS': 'AVX2'}, True),  # separates the AVX2 GEMM's speed from CNR's
    'oneDNN off': ({}, False),
    'portable': ({'ATEN_CPU_CAPABILITY': 'avx2', 'MKL_CBWR': 'AVX2'}, False),
}

STEP = r'''
import sys, time, torch
from transformers import LlavaForConditionalGeneration
from coincide.testbed.models import llava_config
torch.set_num_threads(1); torch.backends.mkldnn.enabled = sys.argv[1] == '1'
class Vocab:  # the demo's vocabulary size and special ids, without training a tokenizer
    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2
    def __len__(self): return 582
    def convert_tokens_to_ids(self, token): return 3
torch.manual_seed(0)
model = LlavaForConditionalGeneration(llava_config('target', Vocab())).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
ids = torch.randint(4, 582, (16, 80)); ids[:, 1:17] = 3                       # a batch of 16: 16 image tokens, 64 text tokens
pixels = torch.randn(16, 3, 32, 32)
def step():
    model(input_ids=ids, pixel_values=pixels, labels=ids).loss.backward(); opt.step(); opt.zero_grad()
for _ in range(3): step()
t = time.perf_counter()
for _ in range(int(sys.argv[2])): step()
print((time.perf_counter() - t) / int(sys.argv[2]), torch.backends.cpu.get_cpu_capability())
'''


def run(env:dict, onednn:bool, steps:int) -> tuple:
    "Seconds per step and ATen's capability in a fresh process with `env` added."
    full = {k: v for k, v in os.environ.items() if k not in ('ATEN_CPU_CAPABILITY', 'MKL_CBWR', 'MKL_ENABLE_INSTRUCTIONS')} | env | {'OMP_NUM_THREADS': '1'}
    out = subprocess.run([sys.executable, '-c', STEP, '1' if onednn else '0', str(steps)], env=full, capture_output=True, text=True, check=True)
    sec, cap = out.stdout.split()
    return float(sec), cap


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--steps', type=int, default=20)
    p.add_argument('--out', default=str(Path(__file__).parent/'results'/'portable_cost.json'))
    args = p.parse_args()
    times, caps = {k: [] for k in SETTINGS}, {}
    for r in range(args.rounds):
        for name, (env, onednn) in SETTINGS.items():
            sec, caps[name] = run(env, onednn, args.steps)
            times[name].append(sec)
            print(f'round {r}: {name:14s} {1000 * sec:6.1f} ms/step ({caps[name]})', flush=True)
    native = np.median(times['native'])
    res = {'command': 'python bench/portable_cost.py ' + ' '.join(sys.argv[1:]), 'cpu': platform.processor() or platform.machine(),
           'model': "the demo's target preset, batch 16 x 80 tokens, AdamW, one thread",
           'settings': {k: {'environment': SETTINGS[k][0], 'onednn': SETTINGS[k][1], 'aten_capability': caps[k],
                            'ms_per_step': [1000 * t for t in times[k]], 'median_ratio_to_native': float(np.median(times[k]) / native)}
                        for k in SETTINGS}}
    Path(args.out).write_text(json.dumps(res, indent=1) + '\n')
    for k, v in res['settings'].items(): print(f"{k:14s} {v['median_ratio_to_native']:.2f}x native")


if __name__ == '__main__': main()
