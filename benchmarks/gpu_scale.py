"""The scale grid (issue 26): KMeans and GaussianMixture at GPU users' sizes, against the peers and the floor.

    python benchmarks/gpu_scale.py [--out DIR] [--budget 420] [--repeats 3] [--dry-run]
    python benchmarks/gpu_scale.py --table benchmarks/results/scale_nvidia_h200.jsonl   # tables from stored rows

Writes ``scale_<card>.jsonl`` (one row per task, appended as each finishes) and ``scale_<card>.md``
into ``--out`` (default ``$OUT`` or ``runs/scale``). ``--dry-run``: every case at toy size on the
CPU, every importable peer exercised, in seconds (``scale-toy.jsonl``; tests/test_gpu_check.py).
The cases, floors and peers: gpuclust/app/bench/scale.py, floors.py, scale_peers.py.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# scikit-learn's array-API GaussianMixture (a peer) needs scipy's array-API mode, set before scipy loads.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

import torch

from gpuclust.app.bench.scale import SCALE_CASES, run_scale, summarize_scale_file, toy


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "runs/scale"))
    p.add_argument("--budget", type=float, default=420.0, help="wall seconds; later tasks become skipped rows")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU")
    p.add_argument("--table", help="only write the markdown tables of this stored JSON-lines file")
    args = p.parse_args(argv)
    if args.table:
        print(summarize_scale_file(args.table))
        return 0
    if args.dry_run:
        cases, device, tag = [toy(c) for c in SCALE_CASES], "cpu", "scale-toy"
    elif torch.cuda.is_available():
        name = re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name(0).lower()).strip("_")
        cases, device, tag = SCALE_CASES, "cuda", f"scale_{name}"
    else:
        print("gpu_scale: no CUDA GPU; use --dry-run for the CPU toy run", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = run_scale(cases, out / f"{tag}.jsonl", device=device, budget_s=args.budget, repeats=args.repeats)
    bad = [r for r in rows if r["status"] == "error"]
    print(f"gpu_scale: {len(rows)} rows, {sum(r['status'] == 'ok' for r in rows)} ok, {len(bad)} errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
