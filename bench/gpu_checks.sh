#!/usr/bin/env bash
# Every GPU check as one prepared run, for a machine with one CUDA GPU (run by hand):
#
#     bash bench/gpu_checks.sh OUT_DIR
#
# 1. the GPU tests of tests/ (picks identical to the CPU path) and the notebooks' `gpu` cells (02, 03, 05);
# 2. `coincide demo --quick --device cuda` from an empty cache, timed;
# 3. the selection stage at N = 665,000, D = 2,048, K = 10,000 (bench/bench_selection.py) with --device cuda;
# 4. greedy MMD on one 20,000-member cluster with --device cuda (bench/bench_greedy.py);
# 5. extraction at real model sizes in bfloat16 (bench/bench_extract.py --model ...), two batch sizes;
# 6. k-means at the paper's scale with the torch backend on the GPU (`coincide cluster --backend torch --device cuda`);
# 7. the selection stage again with numpy on all CPU cores of the same machine (--workers = cores), to compare the indices.
#
# Each step has a time limit, so that one slow step cannot take the others with it. Results go to OUT_DIR: log.txt
# (the machine, torch and CUDA versions open it) and results.tgz (the JSON files, the demo's results.csv and the three
# notebooks with their gpu outputs), re-packed after every step so that a run cut short keeps what it finished. Where `coincide` is not installed (PYTHONPATH use), a small launcher is written next to the interpreter.
set -u
OUT=${1:?usage: bash bench/gpu_checks.sh OUT_DIR}; mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
PY=$(command -v python3)
N=${N:-665000} D=${D:-2048} K=${K:-10000} GREEDY_N=${GREEDY_N:-20000}   # smaller values: a dry run of the script
SCRATCH=${SCRATCH:-/tmp/coincide-gpu}; R=$SCRATCH/results; mkdir -p "$R"
exec > >(tee -a "$OUT/log.txt") 2>&1

step() { # step NAME LIMIT_S COMMAND...: run with a time limit, print its wall time and exit status
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit} s) at $(date +%T)"
  local t0=$SECONDS; timeout "$limit" "$@"; local rc=$?
  echo "=== $name: exit $rc after $((SECONDS - t0)) s"
  tar czf "$OUT/results.tgz" -C "$SCRATCH" results
}

command -v coincide >/dev/null || printf '#!%s\nimport sys\nfrom coincide.cli import main\nif __name__ == "__main__": sys.exit(main())\n' "$PY" > "$(dirname "$PY")/coincide"
chmod +x "$(dirname "$PY")/coincide" 2>/dev/null
nvidia-smi -L; nproc; free -g | head -2
$PY -c "import torch, transformers, faiss, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(), '| transformers', transformers.__version__, '| faiss', faiss.__version__, '| numpy', numpy.__version__)"
git log -1 --format='commit %h %s' 2>/dev/null

# the paper-scale run folder is written on the CPU while the GPU steps run
( $PY bench/bench_selection.py --generate "$SCRATCH/run" $N $D $K 0.68 > "$SCRATCH/generate.log" 2>&1; echo "generate exit $?" >> "$SCRATCH/generate.log" ) &
GEN=$!

step pytest-gpu 120 $PY -m pytest -q -p no:cacheprovider tests/test_selection_scale.py tests/test_training.py::test_train_and_demo_take_a_device
( step notebooks-gpu 240 $PY tools/run_notebooks.py nbs/02_activations.ipynb nbs/03_clustering.ipynb nbs/05_selection.ipynb --flags gpu > "$SCRATCH/notebooks.log" 2>&1
  mkdir -p "$R/notebooks"; cp nbs/02_activations.ipynb nbs/03_clustering.ipynb nbs/05_selection.ipynb "$SCRATCH/notebooks.log" "$R/notebooks/" ) &
NBS=$!

step demo-quick-cuda 180 coincide demo --quick --device cuda --out "$SCRATCH/demo"
cp "$SCRATCH/demo/results.csv" "$R/demo_quick_cuda_results.csv" 2>/dev/null

wait $GEN; cat "$SCRATCH/generate.log"
step selection-cuda 150 $PY bench/bench_selection.py --skip-greedy --run "$SCRATCH/run" --device cuda --results "$R/selection_gpu.json"
step greedy-cuda 90 $PY bench/bench_greedy.py --device cuda --n $GREEDY_N --m $((GREEDY_N / 5)) --out "$R/greedy_gpu.json"

for bs in 16 64; do
  step "extract-interleave-0.5b-bs$bs" 100 $PY bench/bench_extract.py --model interleave-0.5b --device cuda --dtype bfloat16 \
    --n $((bs * 8)) --batch-size $bs --repeats 2 --num-workers 8 --json "$R/extract_interleave_bs$bs.json"
done
step extract-smolvlm-256m 90 $PY bench/bench_extract.py --model smolvlm-256m --device cuda --dtype bfloat16 --n 512 --batch-size 64 \
  --repeats 2 --num-workers 8 --layers 3 8 13 18 23 --json "$R/extract_smolvlm.json"

mkdir -p "$SCRATCH/km"; ln -sf "$SCRATCH/run/embeddings.npy" "$SCRATCH/km/embeddings.npy"
step kmeans-paper-scale-cuda 150 coincide cluster "$SCRATCH/km" --k $K --backend torch --device cuda
cp "$SCRATCH/km/cluster.manifest.json" "$R/kmeans_gpu_manifest.json" 2>/dev/null

step selection-cpu-all-cores 120 $PY bench/bench_selection.py --skip-greedy --run "$SCRATCH/run" --workers "$(nproc)" --results "$R/selection_cpu_all_cores.json"
wait $NBS; cat "$SCRATCH/notebooks.log"; cp "$SCRATCH/generate.log" "$R/"
tar czf "$OUT/results.tgz" -C "$SCRATCH" results
echo "=== all steps done at $(date +%T)"
