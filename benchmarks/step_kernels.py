"""The per-step kernels of rnnlab.nn.fused against the time step's GEMM, one thread, float32.

    python benchmarks/step_kernels.py [--configs A,B,C] [--reps 2000]

A time step of a recurrent layer is one GEMM ``(B, H) x (H, G H)`` (forward; ``(B, G H) x (G H,
H)`` backward) and one fused kernel over the ``B H`` units. The kernel's share of the step is
the ratio printed here: at H = 128 the LSTM forward kernel took a third of the GEMM's time
before it was split into one loop per written array (see docs/benchmarks.md). Microseconds per
call, best of three runs of ``--reps`` calls each; the GEMM is NumPy's (OpenBLAS) on one thread.
Unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE in the command to time NumPy's GEMM at full speed.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from rnnlab.bench import CONFIGS
from rnnlab.nn import fused

GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def _us(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best * 1e6


def kernels(cell: str, B: int, H: int, rng):
    """``(forward, backward)``: the cell's two kernels on random arrays of one time step."""
    G = GATES[cell]

    def f32(*shape, lo=None):
        x = rng.uniform(0.05, 0.95, shape) if lo else rng.standard_normal(shape)
        return x.astype(np.float32)

    a, hh, b = f32(B, G * H), f32(B, G * H), f32(G * H)
    dy, dnext, h = f32(B, H), f32(B, H), np.tanh(f32(B, H))
    out, dh = np.empty((B, H), np.float32), np.empty((B, H), np.float32)
    if cell == "rnn":
        return (lambda: fused.rnn_forward_units(a, hh, b, False, out, 0, H),
                lambda: fused.rnn_backward_units(dy, dnext, None, h, False, dh, out, 0, H))
    gates, da = f32(B, G * H, lo=True), np.empty((B, G * H), np.float32)
    if cell == "gru":
        bhn, hp, direct = f32(H), f32(B, H), f32(B, H)
        return (lambda: fused.gru_forward_units(a, hh, b, bhn, hp, out, dh, 0, H),
                lambda: fused.gru_backward_units(dy, dnext, direct, None, gates, h, hp, dh, da, out, 0, H))
    cp, c, tc = f32(B, H), np.empty((B, H), np.float32), np.empty((B, H), np.float32)
    dc = f32(B, H)
    return (lambda: fused.lstm_forward_units(a, hh, b, cp, c, tc, out, 0, H),
            lambda: fused.lstm_backward_units(dy, dnext, None, dc, gates, cp, h, dh, da, 0, H))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="A,B,C")
    ap.add_argument("--reps", type=int, default=2000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print("| cell | cfg | B x H | forward kernel us | backward kernel us | step GEMM us | forward / GEMM |")
    print("|---|---|---|---:|---:|---:|---:|")
    with threadpool_limits(1):
        for cfg in args.configs.split(","):
            B, _, H, _ = CONFIGS[cfg]
            for cell in ("rnn", "gru", "lstm"):
                G = GATES[cell]
                hprev, w_t = rng.standard_normal((B, H)).astype(np.float32), \
                    rng.standard_normal((H, G * H)).astype(np.float32)
                prod = np.empty((B, G * H), np.float32)
                gemm = _us(lambda: np.matmul(hprev, w_t, out=prod), args.reps)
                fwd, bwd = (_us(k, args.reps) for k in kernels(cell, B, H, rng))
                print(f"| {cell} | {cfg} | {B} x {H} | {fwd:.1f} | {bwd:.1f} | {gemm:.1f} | {fwd / gemm:.2f} |")


if __name__ == "__main__":
    main()
