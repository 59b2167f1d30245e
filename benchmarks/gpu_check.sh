#!/usr/bin/env bash
# One call on a lent H100 (the device tool): CUDA tests, then the GPU benchmark grid.
# Finishes within ~8 minutes. Needs the dataset carried into .data/fashion-mnist:
#   mkdir -p .data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/* .data/fashion-mnist/
#   (.data/ is git-ignored; name it in the device tool's `carry`.)
# Results land in benchmarks/results/ (and $OUT when set, so the device tool brings them back).
set -uo pipefail
cd "$(dirname "$0")/.."
export GPUCLUST_DATA="${GPUCLUST_DATA:-$PWD/.data/fashion-mnist}" PYTHONUNBUFFERED=1
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>/dev/null || export PYTHONPATH="$PWD:${PYTHONPATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu_device.txt"
timeout 150 python3 -m pytest tests -q -x -k "cuda or cupy or gpu" -p no:cacheprovider 2>&1 | tail -n 15 | tee "$out/gpu_tests.txt"
timeout 330 python3 -m gpuclust.cli bench --grid gpu --out "$out" --tag gpu_h100 --repeats 3
python3 benchmarks/update_readme.py --check-only >/dev/null 2>&1 || true
ls -l "$out"
