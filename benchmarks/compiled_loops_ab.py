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
from rnnlab.lm.plan import Plan
from rnnlab.nn import cells

CONFIGS = {k: bench.CONFIGS[k] for k in "ABC"}


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
    plans = (Plan("blas", 1), Plan("blas", 2), Plan("split", 2))  # the three columns below
    variants = {}  # (loops on, plan) -> step
    for on in (True, False):
        for plan in plans:
            variants[on, plan] = bench.make_rnnlab_step(args.cell, args.layers, B, T, H, E, plan=plan)
    times = {k: [] for k in variants}
    for r in range(args.rounds + 1):  # round 0 warms up (compiles, fills the workspace pool)
        for (on, plan), step in variants.items():
            cells.sequence_loops = with_loops if on else (lambda xp, dtype: None)
            # bench's block: a pause at 2 threads, untimed steps (plan.timed_steps), then the timed ones
            t = bench._block(step, 2 if r == 0 else args.steps, plan.threads, plan.blas_threads)
            if r:
                times[on, plan] += t
    cells.sequence_loops = with_loops
    print(f"{args.cell} L{args.layers} {args.config}: chars/s, median of {args.rounds} rounds x {args.steps} steps")
    print("| loops | 1 thread | 2 BLAS threads | 2 shards |")
    print("|---|---|---|---|")
    for on in (True, False):
        row = [B * T / statistics.median(times[on, plan]) for plan in plans]
        print(f"| {'on' if on else 'off'} | " + " | ".join(f"{v:,.0f}" for v in row) + " |")


if __name__ == "__main__":
    main()
