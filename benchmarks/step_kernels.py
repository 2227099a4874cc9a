"""The per-step kernels of rnnlab.nn.fused against the time step's GEMM, one thread, float32.

    python benchmarks/step_kernels.py [--configs A,B,C] [--reps 2000]

A time step of a recurrent layer is one GEMM ``(B, H) x (H, G H)`` (forward; ``(B, G H) x (G H,
H)`` backward) and one fused kernel over the ``B H`` units. The kernel's share of the step is
the ratio printed here (per call): at H = 128 the LSTM forward kernel took a third of the GEMM's
time before it was split into one loop per written array (see docs/benchmarks.md). Microseconds
per call, best of three runs of ``--reps`` calls each; the GEMM is NumPy's (OpenBLAS) on one
thread.
Unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE in the command to time NumPy's GEMM at full speed.

The "per call" columns call each kernel from Python on one step's arrays, so they include
numba's dispatch (a few microseconds: at A it is most of the RNN kernels' time). The "in a loop"
columns call it as the compiled loops over time do (:mod:`rnnlab.nn.timeloop`): from compiled
code, over the ``T`` steps of the config, each step on its own arrays (the gates, states and
gradients of a whole sequence, which outgrow the L2 cache at A already), microseconds per step.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from numba import njit
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


def _arrays(rng):
    """``f32(*shape, lo=False)``: random float32 arrays, in (0.05, 0.95) with ``lo`` (gate values)."""
    def f32(*shape, lo=False):
        x = rng.uniform(0.05, 0.95, shape) if lo else rng.standard_normal(shape)
        return x.astype(np.float32)

    return f32


def kernels(cell: str, B: int, H: int, rng):
    """``(forward, backward)``: the cell's two kernels on random arrays of one time step."""
    G = GATES[cell]
    f32 = _arrays(rng)

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


@njit(nogil=True)
def _rnn_loop(backward, S, hh, b, dy, dnext, Hs, DH, dA, relu):
    """The kernels of ``T = S.shape[0]`` steps as ``timeloop.rnn_forward``/``rnn_backward`` call
    them (``S[t]`` holds the step's input projection and is overwritten by ``h_t``)."""
    H = S.shape[2]
    for s in range(S.shape[0]):
        if backward:
            t = S.shape[0] - 1 - s
            fused.rnn_backward_units(dy[t], dnext, None, Hs[t], relu, DH[t], dA[t], 0, H)
        else:
            fused.rnn_forward_units(S[s], hh, b, relu, S[s], 0, H)


@njit(nogil=True)
def _gru_loop(backward, A, hh, b, bhn, S, HN, dy, dnext, direct, dHH, dAn, DH):
    H = S.shape[2]
    T = A.shape[0]
    for s in range(T):
        if backward:
            t = T - 1 - s
            fused.gru_backward_units(dy[t], dnext, direct, None, A[t], HN[t], S[t], DH[t], dHH[t], dAn[t], 0, H)
        else:
            fused.gru_forward_units(A[s], hh, b, bhn, S[s], HN[s], S[s + 1], 0, H)


@njit(nogil=True)
def _lstm_loop(backward, A, hh, b, C, TC, S, dy, dnext, dcell, DH, dA):
    H = S.shape[2]
    T = A.shape[0]
    for s in range(T):
        if backward:
            t = T - 1 - s
            fused.lstm_backward_units(dy[t], dnext, None, dcell, A[t], C[t], TC[t], DH[t], dA[t], 0, H)
        else:
            fused.lstm_forward_units(A[s], hh, b, C[s], C[s + 1], TC[s], S[s + 1], 0, H)


def in_loop(cell: str, T: int, B: int, H: int, rng) -> tuple[float, float]:
    """Microseconds per step of the cell's forward and backward kernels called from compiled
    code over ``T`` steps, each step on its own arrays (the loops above), best of three."""
    G = GATES[cell]
    f32 = _arrays(rng)
    hh, b, dy, dnext, DH = f32(B, G * H), f32(G * H), f32(T, B, H), f32(B, H), f32(T, B, H)
    if cell == "rnn":
        A0, Hs, dA = f32(T, B, H), np.tanh(f32(T, B, H)), f32(T, B, H)
        A = A0.copy()
        loop = lambda bwd: _rnn_loop(bwd, A, hh, b, dy, dnext, Hs, DH, dA, False)  # noqa: E731
    elif cell == "gru":
        A0, S, HN, direct, dHH, dAn = (f32(T, B, G * H, lo=True), f32(T + 1, B, H), f32(T, B, H), f32(B, H),
                                       f32(T, B, G * H), f32(T, B, H))
        A, bhn = A0.copy(), f32(H)
        loop = lambda bwd: _gru_loop(bwd, A, hh, b, bhn, S, HN, dy, dnext, direct, dHH, dAn, DH)  # noqa: E731
    else:
        A0, C, TC, S, dcell, dA = (f32(T, B, G * H), f32(T + 1, B, H), f32(T, B, H), f32(T + 1, B, H), f32(B, H),
                                   f32(T, B, G * H))
        A = A0.copy()
        loop = lambda bwd: _lstm_loop(bwd, A, hh, b, C, TC, S, dy, dnext, dcell, DH, dA)  # noqa: E731

    def timed(bwd):
        np.copyto(A, A0)  # the forward kernels overwrite their input projections
        t = time.perf_counter()
        loop(bwd)
        return time.perf_counter() - t

    timed(False), timed(True)  # compile
    return tuple(min(timed(bwd) for _ in range(3)) / T * 1e6 for bwd in (False, True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="A,B,C")
    ap.add_argument("--reps", type=int, default=2000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print("| cell | cfg | B x H | forward per call us | backward per call us | forward in a loop us | "
          "backward in a loop us | step GEMM us | forward / GEMM |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    with threadpool_limits(1):
        for cfg in args.configs.split(","):
            B, T, H, _ = CONFIGS[cfg]
            for cell in ("rnn", "gru", "lstm"):
                G = GATES[cell]
                hprev, w_t = rng.standard_normal((B, H)).astype(np.float32), \
                    rng.standard_normal((H, G * H)).astype(np.float32)
                prod = np.empty((B, G * H), np.float32)
                gemm = _us(lambda: np.matmul(hprev, w_t, out=prod), args.reps)
                fwd, bwd = (_us(k, args.reps) for k in kernels(cell, B, H, rng))
                lf, lb = in_loop(cell, T, B, H, rng)
                print(f"| {cell} | {cfg} | {B} x {H} | {fwd:.1f} | {bwd:.1f} | {lf:.1f} | {lb:.1f} | {gemm:.1f} | "
                      f"{fwd / gemm:.2f} |")


if __name__ == "__main__":
    main()
