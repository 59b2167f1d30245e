#!/usr/bin/env bash
# The GPU check: one call on a lent GPU (the device tool), at most 8 minutes, nothing lost.
#
#   GPUCLUST_COMMIT=$(git rev-parse --short HEAD) bash benchmarks/gpu_check.sh [--dry-run] [--steps LIST]
#
# Independent steps, each under its own `timeout`; a failing or timed-out step does not stop
# the next. Every step writes its full log and its results straight into $OUT as it goes
# (JSON lines appended and fsynced row by row), so a killed call still returns what it measured.
# The device tool brings back at most 8 files from $OUT, so the check writes at most 6:
#   check.log          every step's full output, in order, with a header and an rc line per step
#   steps.jsonl        one line per step: rc, seconds, timed out
#   smoke.jsonl        one line per smoke check
#   gpu_<card>.jsonl   the benchmark rows (gpu-toy.jsonl in the dry run), one per case
#   gpu_<card>.md      the table made from them (plots are made back home from the rows)
#   run_full_gpu.tgz   only with the optional run step
#
#   step       timeout  what
#   env         10 s    nvidia-smi and versions
#   smoke      120 s    benchmarks/gpu_smoke.py: every estimator, dtype and init on CUDA
#                       against the CPU, metrics, CuPy in/out, autoencoder train+resume+encode,
#                       one-rank NCCL torchrun, one full EM iteration at D=6272, batched vs
#                       looped Cholesky at D=1024/2048/6272
#   tests       75 s    the CUDA tests (-k "cuda or cupy or gpu"), no -x
#   bench      245 s    GRIDS["gpu"], cheap to expensive, full covariance last, --repeats 2; first
#                       the peer wheels in .whl/ (benchmarks/fetch_peer_wheels.sh), when staged, are
#                       installed into a temporary folder (--no-deps --no-index; a failure is logged)
#   summarize   15 s    the table from the stored rows (also after a bench cut short)
#   total      465 s    (+2 s kill grace per step: 475 s, under 480 s)
#   run        240 s    optional (GPUCLUST_GPU_RUN=1 or --steps run): `gpuclust run --profile
#                       full`. Not in the 8 minutes: give it a call of its own.
#   scale      460 s    optional, a call of its own (`--steps env,scale`: 474 s with kill grace):
#                       benchmarks/gpu_scale.py, issue 26's scale grid (1M-10M rows, K up to 65536)
#                       against flash-kmeans, fastkmeans, fast-pytorch-kmeans, torchgmm and
#                       scikit-learn's array-API GaussianMixture (peer wheels from .whl/ as for bench),
#                       cheapest first under a 400 s wall budget, --repeats 2; writes
#                       scale_<card>.jsonl row by row and scale_<card>.md (scale-toy.* in the dry run)
#
# --dry-run (or GPUCLUST_GPU_CHECK_DRY_RUN=1): every step at toy size on the CPU (the smoke
# checks on the CPU's own branches and gloo for NCCL, the tests collected only, the bench's
# gpu-toy grid), in well under a minute; tests/test_gpu_check.py runs it in CI.
# Staging the dataset and the peer wheels (carry: [".data", ".whl"]) and what to do with the files
# that come back: benchmarks/README.md.
set -uo pipefail
cd "$(dirname "$0")/.."

dry="${GPUCLUST_GPU_CHECK_DRY_RUN:-0}"
steps="env,smoke,tests,bench,summarize"
[ "${GPUCLUST_GPU_RUN:-0}" = 1 ] && steps="$steps,run"
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry=1 ;;
        --steps) steps="$2"; shift ;;
        --steps=*) steps="${1#--steps=}" ;;
        *) echo "gpu_check.sh: unknown argument $1 (use --dry-run, --steps LIST)" >&2; exit 2 ;;
    esac
    shift
done

py="${PYTHON:-python3}"
out="${OUT:-runs/gpu_check}"  # runs/ is git-ignored
mkdir -p "$out"
out="$(cd "$out" && pwd)"
# The staged copy (benchmarks/README.md) when it travelled; else the loader's own search order.
# A GPUCLUST_DATA that is set is the only place the loader looks, so set it only where the files are.
if [ -z "${GPUCLUST_DATA:-}" ] && [ -d "$PWD/.data/fashion-mnist" ]; then
    export GPUCLUST_DATA="$PWD/.data/fashion-mnist"
fi
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # no install needed: the image has every dependency
if [ -z "${GPUCLUST_COMMIT:-}" ] && commit=$(git rev-parse --short HEAD 2>/dev/null); then
    export GPUCLUST_COMMIT="$commit"
fi

declare -A limit=([env]=10 [smoke]=120 [tests]=75 [bench]=245 [summarize]=15 [run]=240 [scale]=460)
failed=0

# step NAME CMD...: run CMD under NAME's timeout, its output appended to check.log; a line to steps.jsonl.
step() {
    local name=$1
    shift
    local t=${limit[$name]} t0 t1 rc seconds timed_out=false
    printf '\n===== %s (timeout %ss, dry run %s): %s\n' "$name" "$t" "$dry" "$*" >>"$out/check.log"
    echo "== $name (timeout ${t}s)"
    t0=$(date +%s.%N)
    timeout -k 2 "$t" "$@" >>"$out/check.log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    seconds=$(awk "BEGIN {printf \"%.1f\", $t1 - $t0}")
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then timed_out=true; fi
    printf '===== %s: rc=%s in %ss (timed out: %s)\n' "$name" "$rc" "$seconds" "$timed_out" >>"$out/check.log"
    printf '{"step": "%s", "rc": %d, "timed_out": %s, "seconds": %s, "timeout_s": %d, "dry_run": %s}\n' \
        "$name" "$rc" "$timed_out" "$seconds" "$t" "$([ "$dry" = 1 ] && echo true || echo false)" >>"$out/steps.jsonl"
    echo "   rc=$rc in ${seconds}s (timed out: $timed_out)"
    [ "$rc" = 0 ] || failed=$((failed + 1))
}

env_info() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
    "$py" -c "
import torch, platform
print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda,
      'available', torch.cuda.is_available())
if torch.cuda.is_available():
    print('device', torch.cuda.get_device_name(0))
try:
    import cupy; print('cupy', cupy.__version__)
except ImportError as exc:
    print('cupy not importable:', exc)
"
    echo "commit ${GPUCLUST_COMMIT:-unknown}; data ${GPUCLUST_DATA:-not staged, the loader search order}"
    if [ -n "${GPUCLUST_DATA:-}" ]; then ls "$GPUCLUST_DATA"; fi
}

run_profile() {
    local work
    work=$(mktemp -d)
    if [ "$dry" = 1 ]; then
        "$py" -m gpuclust run --profile quick --limit 300 --epochs 1 --covariance-types diag --device cpu \
            --out "$work/run_full_gpu" -q || return
    else
        "$py" -m gpuclust run --profile full --out "$work/run_full_gpu" -q || return
    fi
    tar czf "$out/run_full_gpu.tgz" -C "$work" run_full_gpu
    rm -rf "$work"
}

summarize_rows() {
    "$py" -c "
import sys
from pathlib import Path
from gpuclust.app.bench import summarize_file
for path in sorted(Path(sys.argv[1]).glob('gpu*.jsonl')):
    print(summarize_file(path, plots=False))
    for png in Path(sys.argv[1]).glob(path.stem + '_*.png'):
        png.unlink()  # made again from the rows back home: the device tool brings back 8 files at most
" "$out"
}

# with_peer_wheels CMD...: run CMD with the pure-Python peers (fast-pytorch-kmeans, torchgmm) that
# travelled as wheels in .whl/: the GPU machine has no package index. They go into a temporary folder
# on PYTHONPATH, not into the image; if that fails, the bench still runs and their rows are skipped rows.
with_peer_wheels() {
    local site rc
    site=$(mktemp -d)
    if compgen -G ".whl/*.whl" >/dev/null; then
        echo "peer wheels: $(cd .whl && echo *.whl)"
        if "$py" -m pip install -q --no-deps --no-index --no-compile --disable-pip-version-check \
            --target "$site" .whl/*.whl; then
            export PYTHONPATH="$PYTHONPATH:$site"
            echo "peer wheels installed into $site"
        else
            echo "peer wheels: pip install failed (rc=$?); the bench goes on, their rows will be skipped"
        fi
    else
        echo "peer wheels: no .whl/ (benchmarks/fetch_peer_wheels.sh); peers the image lacks are skipped rows"
    fi
    "$@"
    rc=$?
    rm -rf "$site"
    return "$rc"
}

export py out dry
export -f env_info run_profile summarize_rows with_peer_wheels

if [ "$dry" = 1 ]; then
    smoke=("$py" benchmarks/gpu_smoke.py --out "$out" --dry-run --budget 100)
    tests=("$py" -m pytest tests -q --collect-only -p no:cacheprovider -k "(cuda or cupy or gpu) and not gpu_check")
    bench=(bash -c 'with_peer_wheels "$py" -m gpuclust bench --grid gpu-toy --device cpu --out "$out" --repeats 1')
    scale=(bash -c 'with_peer_wheels "$py" benchmarks/gpu_scale.py --dry-run --out "$out" --repeats 1 --budget 60')
else
    smoke=("$py" benchmarks/gpu_smoke.py --out "$out" --budget 95)
    tests=("$py" -m pytest tests -v -rfEs --tb=short --durations=15 -p no:cacheprovider
        -k "(cuda or cupy or gpu) and not gpu_check")
    bench=(bash -c 'with_peer_wheels "$py" -m gpuclust bench --grid gpu --out "$out" --repeats 2')
    scale=(bash -c 'with_peer_wheels "$py" benchmarks/gpu_scale.py --out "$out" --repeats 2 --budget 400')
fi

total=0
for name in ${steps//,/ }; do
    [ -n "${limit[$name]:-}" ] || { echo "gpu_check.sh: unknown step $name" >&2; exit 2; }
    total=$((total + limit[$name] + 2))
done
echo "gpu_check: steps $steps, timeouts sum to ${total}s (with kill grace); results in $out"

for name in ${steps//,/ }; do
    case "$name" in
        env) step env bash -c env_info ;;
        smoke) step smoke "${smoke[@]}" ;;
        tests) step tests "${tests[@]}" ;;
        bench) step bench "${bench[@]}" ;;
        summarize) step summarize bash -c summarize_rows ;;
        run) step run bash -c run_profile ;;
        scale) step scale "${scale[@]}" ;;
    esac
done
ls -l "$out"
grep -h '"status": "\(error\|mismatch\)"' "$out"/smoke.jsonl 2>/dev/null | cut -c1-300 | head -n 40
echo "gpu_check: $failed step(s) failed"
[ "$failed" = 0 ]
