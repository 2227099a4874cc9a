"""The whole-sequence GEMMs of a recurrent layer: rnnlab's packed kernel in its two loop orders
against NumPy's OpenBLAS, one thread, float32.

    python benchmarks/whole_gemms.py [--configs A,B,C] [--cell lstm] [--rounds 5] [--layout "copied, 8x3 tiles"]
                                     [--kc 128,512]

Besides its per-step products, a layer's training step runs three products over all ``N = T B``
rows of the sequence (``G`` gates, hidden size ``H``, a second layer's input size ``H``)::

    proj   x W_xh^T   (N, H) x (H, G H)       the input projection of every step
    dW     dA^T h     (G H, N) x (N, H)       dW_hh and dW_xh (dA: the gates' gradients, read transposed)
    dX     dA W_xh    (N, G H) x (G H, H)     the gradient of the layer's input

Under the packed plans (``rnnlab.lm.plan``) they run through :func:`rnnlab.nn.packed.matmul`
(blocks of rows, each over every panel, in the layout ``--layout``: by default the vector ISA's
operands and the first tile, as no planner runs here), under ``blas`` through ``np.matmul``. The column "panels
outside" is :func:`rnnlab.nn.packed.gemm` over the same operands, the per-step products' order,
which the whole products used before: for each block of ``k``, each panel, then every row tile
(same bits). ``--kc 128,512``: instead of :func:`rnnlab.nn.packed.matmul`'s own block of ``k``
(:data:`~rnnlab.nn.packed.KC` for a transposed ``a``, :data:`~rnnlab.nn.packed.KC_ROWS` else), one
row-blocks column per block size given (same bits, asserted). GFLOP/s,
median of ``--rounds`` rounds in which the three run one call each in turn (after one untimed
call each), so that the machine's slow moments fall on all three. Unset OPENBLAS_CORETYPE and
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
    ap.add_argument("--layout", choices=sorted(packed.LAYOUTS), help="the packed kernel's layout, operands "
                    "and tile, e.g. 'copied, 8x3 tiles' (default: the vector ISA's operands, the first tile)")
    ap.add_argument("--kc", help="comma-separated blocks of k for the row-blocks order, one column each "
                    "(default: packed.matmul's own)")
    args = ap.parse_args(argv)
    kcs = [int(v) for v in args.kc.split(",")] if args.kc else []
    if args.layout:
        packed.set_layout(args.layout)
    rng = np.random.default_rng(0)
    f = np.float32
    print(f"{args.cell}, one thread, float32, GFLOP/s (median of {args.rounds} interleaved rounds): "
          f"packed (row blocks, {packed.layout()}{''.join(f'; kc {k}' for k in kcs)}) | "
          "packed (panels outside) | OpenBLAS")
    with threadpool_limits(1):
        for cfg in args.configs.split(","):
            B, T, H, _ = CONFIGS[cfg]
            N, GH = T * B, GATES[args.cell] * H
            x = rng.standard_normal((N, H), dtype=f)
            W = rng.standard_normal((GH, H), dtype=f)
            dA = rng.standard_normal((N, GH), dtype=f)
            for name, a, b in (("proj x W^T", x, W.T), ("dW dA^T h", dA.T, x), ("dX dA W", dA, W)):
                out = np.empty((a.shape[0], b.shape[1]), f)
                P, pcol, pw = packed.operand(b)  # what packed.matmul reads
                copy_a = packed.COPY_A and a.strides[1] != a.itemsize  # as packed.matmul decides
                rows = [lambda kc=kc: packed._rows(a, P, pcol, pw, out, 0, a.shape[0], False, copy_a,
                                                   packed.TILE, kc) for kc in kcs]
                if kcs:  # every block of k gives the same bits
                    got = [(fn(), out.copy())[1] for fn in rows]
                    assert all(np.array_equal(g, got[0]) for g in got), "blocks of k changed the bits"
                sides = (*(rows or [lambda: packed.matmul(a, b, out)]),
                         lambda: packed.gemm(a, P, pcol, pw, out, 0, len(pcol), packed.TILE),
                         lambda: np.matmul(a, b, out=out))
                times = [[] for _ in sides]
                for fn in sides:
                    fn()
                for _ in range(args.rounds):
                    for fn, ts in zip(sides, times):
                        t0 = time.perf_counter()
                        fn()
                        ts.append(time.perf_counter() - t0)
                flops = 2 * a.shape[0] * a.shape[1] * b.shape[1]
                rates = " | ".join(f"{flops / statistics.median(ts) / 1e9:6.1f}" for ts in times)
                print(f"  {cfg} {name:<11} {a.shape[0]:>5} x {a.shape[1]:>5} x {b.shape[1]:>5}: {rates}", flush=True)


if __name__ == "__main__":
    main()
