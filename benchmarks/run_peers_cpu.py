"""The committed peers table on the CPU (`results/peers_cpu.*`): the `peers` grid in two halves.

Cases up to 60,000 rows with 3 repeats, then the 1,000,000-row cases with one (appended to the
same file), so the slow peers' converged fits on those fit in about half an hour. Run it on an
otherwise idle machine, from the repository root, after `pip install -e '.[app,peers]'`:

    python benchmarks/run_peers_cpu.py && python benchmarks/update_readme.py
"""

from gpuclust.app.bench import GRIDS, run_grid

OUT, TAG = "benchmarks/results", "peers_cpu"


def main():
    cases = GRIDS["peers"]
    say = lambda message: print(message, flush=True)
    run_grid([c for c in cases if c.n <= 60000], OUT, TAG, repeats=3, say=say, fresh=True)
    run_grid([c for c in cases if c.n > 60000], OUT, TAG, repeats=1, say=say, fresh=False)


if __name__ == "__main__":
    main()
