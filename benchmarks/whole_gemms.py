"""The whole-sequence GEMMs of a recurrent layer: rnnlab's packed kernel, its schedule timed per
shape, against NumPy's OpenBLAS, one thread, float32.

    python benchmarks/whole_gemms.py [--configs A,B,C] [--cell lstm] [--rounds 5] [--schedules]

Besides its per-step products, a layer's training step runs three products over all ``N = T B``
rows of the sequence (``G`` gates, hidden size ``H``, a second layer's input size ``H``)::

    proj   x W_xh^T   (N, H) x (H, G H)       the input projection of every step
    dW     dA^T h     (G H, N) x (N, H)       dW_hh and dW_xh (dA: the gates' gradients, read transposed)
    dX     dA W_xh    (N, G H) x (G H, H)     the gradient of the layer's input

Under the packed plans (``rnnlab.lm.plan``) they run through :func:`rnnlab.nn.packed.matmul`,
under ``blas`` through ``np.matmul``. ``packed.matmul`` times its candidate schedules
(:func:`rnnlab.nn.packed.candidates`: register tile, ``b`` in place or packed, loop order, block
of ``k``, ``a`` copied or not) on the first product of a shape and keeps the fastest; its column shows that
choice's rate and names it. ``--schedules``: one column per candidate as well (the same bits, asserted). GFLOP/s,
median of ``--rounds`` rounds in which every column runs one call in turn (after one untimed call
each), so that the machine's slow moments fall on all of them. Unset OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE in the command to time NumPy's GEMM at full speed.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from rnnlab.bench import CONFIGS
from rnnlab.nn import packed

GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default="A,B,C")
    ap.add_argument("--cell", default="lstm", choices=sorted(GATES))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--schedules", action="store_true", help="a column for each candidate schedule too")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    f = np.float32
    print(f"{args.cell}, one thread, float32, GFLOP/s (median of {args.rounds} interleaved rounds): "
          "packed (its schedule: tile, b, order, kc, a copied) | OpenBLAS"
          f"{' | each candidate' if args.schedules else ''}")
    with threadpool_limits(1):
        for cfg in args.configs.split(","):
            B, T, H, _ = CONFIGS[cfg]
            N, GH = T * B, GATES[args.cell] * H
            x = rng.standard_normal((N, H), dtype=f)
            W = rng.standard_normal((GH, H), dtype=f)
            dA = rng.standard_normal((N, GH), dtype=f)
            for name, a, b in (("proj x W^T", x, W.T), ("dW dA^T h", dA.T, x), ("dX dA W", dA, W)):
                out = np.empty((a.shape[0], b.shape[1]), f)
                packed.matmul(a, b, out)  # times the candidates, keeps the fastest
                k = packed.key(a, b)
                chosen = packed.schedule(k)
                cands = packed.candidates(k[3], k[4]) if args.schedules else []

                def forced(sched):
                    def run():
                        packed.SCHEDULE = sched
                        try:
                            packed.matmul(a, b, out)
                        finally:
                            packed.SCHEDULE = None
                    return run

                sides = (lambda: packed.matmul(a, b, out), lambda: np.matmul(a, b, out=out), *map(forced, cands))
                if cands:  # every schedule gives the same bits
                    got = [(fn(), out.copy())[1] for fn in sides[2:]]
                    assert all(np.array_equal(g, got[0]) for g in got), "schedules changed the bits"
                times = [[] for _ in sides]
                for fn in sides:
                    fn()
                for _ in range(args.rounds):
                    for fn, ts in zip(sides, times):
                        t0 = time.perf_counter()
                        fn()
                        ts.append(time.perf_counter() - t0)
                flops = 2 * a.shape[0] * a.shape[1] * b.shape[1]
                rates = [f"{flops / statistics.median(ts) / 1e9:6.1f}" for ts in times]
                def label(s):
                    tile = next(n for n, t in packed.LAYOUTS.items() if t == s[0]).split()[0]
                    return f"{tile}, {'in place' if s[1] else 'packed'}, {s[2]} {s[3]}{', a copied' if s[4] else ''}"

                print(f"  {cfg} {name:<11} {a.shape[0]:>5} x {a.shape[1]:>5} x {b.shape[1]:>5}: {rates[0]} "
                      f"({label(chosen)}) | {rates[1]}"
                      + "".join(f" | {r} ({label(c)})" for r, c in zip(rates[2:], cands)), flush=True)


if __name__ == "__main__":
    main()
