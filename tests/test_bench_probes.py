"""The greedy benchmarks: the look-ahead probe (bench/probe_lookahead.py) measures without changing a pick and its parts add up; bench_greedy.py --repeat pairs each run with the products around it."""
import hashlib, json, os, subprocess, sys
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'bench'))
from bench_greedy import cluster
from coincide.selection import greedy_mmd


def test_probe_keeps_picks_and_accounts_for_its_time(tmp_path):
    out = tmp_path/'probe.json'
    subprocess.run([sys.executable, str(ROOT/'bench'/'probe_lookahead.py'), '--n', '1500', '--d', '64', '--m', '300',
                    '--cache-mb', '2', '--out', str(out)], check=True, capture_output=True, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    r = json.loads(out.read_text())
    picks = greedy_mmd(cluster(1500, 64), 300, cache_bytes=2 << 20)
    assert r['picks_sha256'] == hashlib.sha256(picks.tobytes()).hexdigest()
    ph = r['phases_s']
    assert ph['fill_kernel'] <= ph['fill'] and ph['lookahead_rows'] <= ph['lookahead'] and ph['steps'] > 0
    assert ph['row_sums'] + ph['fill'] + ph['lookahead'] + ph['steps'] <= ph['total']
    f = r['fills']
    assert r['batches'] >= f['batches_with_a_pool'] > 1 and 0 <= f['trigger_in_pool'] <= f['triggers'] == f['batches_with_a_pool'] - 1
    assert r['kernel_rows_known'] == 2 * 2**20 // (8 * 1500) - 2 * 2**20 // (8 * 1500) // 16
    assert set(r['row_product_ms']) == {'32', '64', '128', '256', '32_transposed_copy'}


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
