#!/usr/bin/env bash
# The committed CPU results: KMeans and GMM against scikit-learn, and the 1M x 32, K=256 memory case.
# About 15 minutes on 2 cores. Then refreshes the README's figures from the results.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m gpuclust bench --grid cpu --out benchmarks/results --tag cpu --repeats 3
python3 -m gpuclust bench --grid cpu-memory --out benchmarks/results --tag cpu-memory --repeats 1
python3 benchmarks/update_readme.py
