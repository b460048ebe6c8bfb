"""The greedy benchmark: bench_greedy.py --repeat pairs each greedy run with the float32 products timed around it."""
import json, os, subprocess, sys
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def test_bench_greedy_repeats_between_products(tmp_path):
    "`bench_greedy.py --repeat 3`: three greedy runs, each between two float32 products (each product shared by neighbours), their ratios summarised."
    out = tmp_path/'greedy.json'
    subprocess.run([sys.executable, str(ROOT/'bench'/'bench_greedy.py'), '--n', '1200', '--d', '48', '--m', '200', '--cache-mb', '2',
                    '--repeat', '3', '--out', str(out)], check=True, capture_output=True, env={**os.environ, 'OPENBLAS_NUM_THREADS': '2'})
    r = json.loads(out.read_text())
    rounds = r['rounds']
    assert len(rounds) == 3 and r['same_picks_every_round'] is True
    assert all(a['float32_gemm_after_s'] == b['float32_gemm_before_s'] for a, b in zip(rounds, rounds[1:]))
    ratios = [g['greedy_s'] / ((g['float32_gemm_before_s'] + g['float32_gemm_after_s']) / 2) for g in rounds]
    s = r['ratio_to_mean_gemm_rounds']
    assert s['n'] == 3 and np.isclose(s['mean'], np.mean(ratios)) and np.isclose(s['sd'], np.std(ratios, ddof=1)) and s['min'] == min(ratios)
    assert r['ratio_to_mean_gemm'] == rounds[0]['ratio_to_mean_gemm']
    assert ('row_sums_one_thread_s' in r) == (max(r['blas_threads']) > 1)
