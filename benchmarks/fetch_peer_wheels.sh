#!/usr/bin/env bash
# Download the pure-Python peers of the GPU grid into .whl/ (git-ignored), for benchmarks/gpu_check.sh:
# the GPU machine has no package index, so they travel with the tree (carry: [".data", ".whl"]) and the
# check installs them with `pip install --no-deps --no-index` into a temporary folder.
#
#   bash benchmarks/fetch_peer_wheels.sh [--with-lightning]
#
# flash-kmeans 0.3.1 (Triton kernels; imports torch, triton, numpy, tqdm) and fastkmeans 0.5.0 (torch, numpy;
# Triton where the GPU has bfloat16) are the scale grid's KMeans peers (benchmarks/gpu_scale.py, issue 26).
# fast-pytorch-kmeans imports numpy, torch and psutil; torchgmm imports numpy, torch, packaging,
# pytorch_lightning (with lightning_fabric, in the same wheel) and torchmetrics (which imports
# lightning_utilities); pytorch_lightning imports fsspec, PyYAML and tqdm. The GPU image has all of
# them (pytorch-lightning 2.6.6 and torchmetrics 1.9.0 by its package list,
# /work/.library/device/KINDS.md), so by default only the two peers are fetched. torchgmm's declared
# anndata and session-info are never imported: --no-deps leaves them out. --with-lightning adds the
# pure-Python pytorch-lightning, torchmetrics and lightning-utilities for an image without them
# (PyYAML, fsspec and tqdm are then still assumed: PyYAML's wheels are compiled).
set -euo pipefail
cd "$(dirname "$0")/.."

py="${PYTHON:-python3}"
# The versions the committed peers results and tests used, and the scale grid's two Triton peers.
wheels=(fast-pytorch-kmeans==0.2.2 torchgmm==0.1.4 flash-kmeans==0.3.1 fastkmeans==0.5.0)
case "${1:-}" in
    "") ;;
    --with-lightning) wheels+=(pytorch-lightning==2.6.6 torchmetrics==1.9.0 lightning-utilities==0.15.3) ;;
    *) echo "fetch_peer_wheels.sh: unknown argument $1 (use --with-lightning)" >&2; exit 2 ;;
esac

mkdir -p .whl
# Pure-Python wheels only (py3-none-any), for the GPU image's Python 3.12.
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation py \
    --abi none --platform any -d .whl "${wheels[@]}"
for w in .whl/*.whl; do
    case "$w" in
        *-none-any.whl) ;;
        *) echo "fetch_peer_wheels.sh: $w is not a pure-Python wheel; it may not install on the GPU machine" >&2; exit 1 ;;
    esac
done
ls -l .whl
