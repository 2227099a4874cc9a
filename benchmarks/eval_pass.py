"""One validation pass as `rnnlab train` runs it in a split run, on one thread and over the
training's shards, alternating.

    python benchmarks/eval_pass.py [--chars 111000 --shards 2 --rounds 3]

The model is the trainer's default (LSTM, 2 layers, hidden 256, embed 64, V = 65) with batch 32
and seq_len 100; the text is random ids (the speed does not depend on them), as many as
tinyshakespeare's validation split by default. The BLAS is held at one thread throughout, as
the trainer holds it for a split run. Runs with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE as the
environment has them; unset both in the command to measure NumPy's GEMMs at full speed.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from rnnlab.lm.evaluate import evaluate
from rnnlab.lm.shards import BatchShards, blas_limit
from rnnlab.models.recurrent_lm import RecurrentLM


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chars", type=int, default=111_000)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    model = RecurrentLM(65, "lstm", 256, 2, 64, rng=np.random.default_rng(0))
    ids = np.random.default_rng(1).integers(0, 65, args.chars)
    with BatchShards(model, args.shards) as shards, blas_limit(1):
        evaluate(model, ids[:5000], "stream", 32, 100, shards=shards)  # compile and warm up
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            evaluate(model, ids, "stream", 32, 100)
            t1 = time.perf_counter()
            evaluate(model, ids, "stream", 32, 100, shards=shards)
            t2 = time.perf_counter()
            print(f"validation pass over {args.chars:,} characters: one thread {t1 - t0:.2f} s, "
                  f"{shards.shards} shards {t2 - t1:.2f} s")


if __name__ == "__main__":
    main()
