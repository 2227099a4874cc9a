"""What the compiled loops over time (rnnlab.nn.timeloop) give: the training step of
`rnnlab bench` with and without them, on 1 thread, on 2 BLAS threads, and split into 2 shards.

    python benchmarks/compiled_loops_ab.py lstm 1 A [--steps 4 --rounds 5]

Without the loops the layers run their Python loop over time with the same numba step kernels
and the same GEMMs (the results are bit-identical from two rows per shard on). Runs with OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE as the environment has them; unset both in the command to measure NumPy's
GEMMs at full speed, as bench_train_step.py does.
"""
from __future__ import annotations

import argparse
import statistics

from rnnlab import bench
from rnnlab.lm import shards
from rnnlab.nn import cells

CONFIGS = {"A": (32, 64, 128, 64), "B": (64, 100, 256, 64), "C": (64, 100, 512, 64)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cell", choices=["rnn", "lstm", "gru"])
    ap.add_argument("layers", type=int)
    ap.add_argument("config", choices=sorted(CONFIGS))
    ap.add_argument("--steps", type=int, default=4, help="timed steps per variant and round")
    ap.add_argument("--rounds", type=int, default=5, help="rounds over the six variants (alternating)")
    args = ap.parse_args()
    B, T, H, E = CONFIGS[args.config]
    with_loops = cells.sequence_loops
    floor = shards._min_step_work
    shards._min_step_work = lambda model: 0  # split wherever asked, to compare
    variants = {}  # (loops on, threads, split) -> step
    for on in (True, False):
        for threads, split in ((1, False), (2, False), (2, True)):
            variants[on, threads, split] = bench.make_rnnlab_step(args.cell, args.layers, B, T, H, E,
                                                                  cores=threads, split=split)
    shards._min_step_work = floor
    times = {k: [] for k in variants}
    for r in range(args.rounds + 1):  # round 0 warms up (compiles, fills the workspace pool)
        for (on, threads, split), step in variants.items():
            cells.sequence_loops = with_loops if on else (lambda xp, dtype: None)
            # bench's block: a pause at 2 threads, one untimed step, then the timed ones
            t = bench._block(step, 2 if r == 0 else args.steps, threads, 1 if split else threads)
            if r:
                times[on, threads, split] += t
    cells.sequence_loops = with_loops
    print(f"{args.cell} L{args.layers} {args.config}: chars/s, median of {args.rounds} rounds x {args.steps} steps")
    print("| loops | 1 thread | 2 BLAS threads | 2 shards |")
    print("|---|---|---|---|")
    for on in (True, False):
        row = [B * T / statistics.median(times[on, th, sp]) for th, sp in ((1, False), (2, False), (2, True))]
        print(f"| {'on' if on else 'off'} | " + " | ".join(f"{v:,.0f}" for v in row) + " |")


if __name__ == "__main__":
    main()
