#!/usr/bin/env bash
# One call on a lent H100 (the device tool): the CUDA tests, the GPU benchmark grid and, with
# GPUCLUST_GPU_RUN=1, `gpuclust run --profile full`. About 8 minutes (+4 with the run).
# The dataset must travel with the tree, git-ignored, named in the device tool's `carry`:
#   mkdir -p .data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/* .data/fashion-mnist/
# Writes at most 7 files to $OUT (the device tool brings back 8 at most), else to
# benchmarks/results/. Back here: copy gpu_h100.jsonl into benchmarks/results/, run
# `python -c "from gpuclust.app.bench import *; summarize(read_jsonl(P), P[:-6]+'.md', P[:-6])"` with
# P=benchmarks/results/gpu_h100.jsonl for the plots, untar run_full_gpu.tgz into
# benchmarks/results/, then python benchmarks/update_readme.py.
set -uo pipefail
cd "$(dirname "$0")/.."
export GPUCLUST_DATA="${GPUCLUST_DATA:-$PWD/.data/fashion-mnist}" PYTHONUNBUFFERED=1
out="${OUT:-benchmarks/results}"
work=$(mktemp -d)
mkdir -p "$out"
export PYTHONPATH="$PWD:${PYTHONPATH:-}"  # no install needed: the image has every dependency
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu_device.txt"
timeout 150 python3 -m pytest tests -q -x -k "cuda or cupy or gpu" -p no:cacheprovider 2>&1 \
    | tail -n 15 | tee "$out/gpu_tests.txt"
timeout 330 python3 -m gpuclust bench --grid gpu --out "$work" --tag gpu_h100 --repeats 3
cp "$work"/gpu_h100.jsonl "$work"/gpu_h100.md "$out"/ 2>/dev/null
if [ "${GPUCLUST_GPU_RUN:-0}" = 1 ]; then
    timeout 240 python3 -m gpuclust run --profile full --out "$work/run_full_gpu" -q \
        && tar czf "$out/run_full_gpu.tgz" -C "$work" run_full_gpu
fi
ls -l "$out"
