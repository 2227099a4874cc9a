"""Synthetic sequence tasks whose answer is known in closed form, for the experiments.

Every sampler takes an explicit ``np.random.Generator`` and returns a :class:`SeqBatch` of
host NumPy arrays, time-major:

=================  ==========================  =====================  ===========================
task               input ``x``                 target ``y``           what it needs
=================  ==========================  =====================  ===========================
:func:`parity`     bits, one-hot ``(T, B, 2)``  ``(1, B)`` class       a 2-state automaton (XOR)
:func:`majority`   bits, one-hot ``(T, B, 2)``  ``(1, B)`` class       one unbounded counter
:func:`adding`     ``(T, B, 2)`` value, marker  ``(1, B, 1)`` real     remember two values, T/2+ steps
:func:`copy_memory` one-hot ``(N+T+N, B, K+2)`` ``(N, B)`` classes     remember N symbols, T+N steps
=================  ==========================  =====================  ===========================

``lengths (B,)`` is set for the variable-length tasks (padding after each sequence's end is
zero); it is ``None`` for fixed-length ones. The target of a sequence-level task is read at each
sequence's own last step, so ``y`` has one output step (``S = 1``); the copy task has ``S = N``.

Shape legend: ``T`` time (the longest sequence of the batch), ``B`` batch, ``S`` output steps,
``K`` symbols, ``N`` symbols to copy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ADDING_BASELINE_MSE = 1.0 / 24.0
"""MSE of the best constant prediction (0.5) in the adding problem: ``Var[(X1 + X2) / 4]`` with
``X1, X2 ~ U(-1, 1)`` independent, ``= 2 * (1/3) / 16 = 1/24 ≈ 0.0417``."""


@dataclass
class SeqBatch:
    """One batch: ``x (T, B, I)`` float, ``y`` int ``(S, B)`` or float ``(S, B, 1)``,
    ``lengths (B,)`` int64 or ``None``; ``kind`` is ``"class"`` or ``"regress"``."""

    x: np.ndarray
    y: np.ndarray
    lengths: np.ndarray | None
    kind: str


def sample_lengths(rng: np.random.Generator, batch: int, min_len: int, max_len: int) -> np.ndarray:
    """``(B,)`` int64 lengths uniform on ``{min_len, ..., max_len}``."""
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    return rng.integers(min_len, max_len + 1, size=batch).astype(np.int64)


def _bits(rng: np.random.Generator, lengths: np.ndarray, dtype):
    """Random bits ``b (T, B)`` (zero past each length) and their one-hot ``x (T, B, 2)``,
    all-zero on padding."""
    lengths = np.asarray(lengths, dtype=np.int64)
    T, B = int(lengths.max()), lengths.shape[0]
    valid = np.arange(T)[:, None] < lengths[None, :]  # (T, B)
    b = rng.integers(0, 2, size=(T, B)) * valid  # (T, B)
    x = np.zeros((T, B, 2), dtype)
    x[..., 0] = (b == 0) & valid
    x[..., 1] = b == 1
    return b, x


def parity(rng: np.random.Generator, batch: int, min_len: int, max_len: int,
           lengths: np.ndarray | None = None, dtype=np.float32) -> SeqBatch:
    r"""Parity of the number of ones: :math:`y = (\sum_t b_t) \bmod 2`, bits uniform.

    A two-state automaton (flip on every 1) solves it for every length; a model that sees only
    ``W`` of ``n > W`` bits can do no better than chance (0.5), because the unseen bits' parity is
    uniform and independent of what it sees.

    ``lengths`` (B,) overrides the uniform draw on ``[min_len, max_len]``.
    """
    if lengths is None:
        lengths = sample_lengths(rng, batch, min_len, max_len)
    b, x = _bits(rng, lengths, dtype)
    y = (b.sum(axis=0) % 2).astype(np.int64)[None, :]  # (1, B)
    return SeqBatch(x, y, np.asarray(lengths, np.int64), "class")


def majority(rng: np.random.Generator, batch: int, min_len: int, max_len: int,
             lengths: np.ndarray | None = None, dtype=np.float32) -> SeqBatch:
    r"""Strict majority of ones: :math:`y = [\#1 > \#0]` (a tie is class 0), bits uniform.

    One counter :math:`c_t = c_{t-1} + (2 b_t - 1)` and the threshold :math:`c_n > 0` solve it
    for every length. A model that sees only the last ``W`` bits sees a sample of the count: it
    stays above chance, but its accuracy falls like ``0.5 + O(sqrt(W / n))`` for ``n >> W``.
    """
    if lengths is None:
        lengths = sample_lengths(rng, batch, min_len, max_len)
    b, x = _bits(rng, lengths, dtype)
    ones = b.sum(axis=0)
    y = (2 * ones > np.asarray(lengths)).astype(np.int64)[None, :]  # (1, B)
    return SeqBatch(x, y, np.asarray(lengths, np.int64), "class")


def adding(rng: np.random.Generator, batch: int, T: int, dtype=np.float32) -> SeqBatch:
    r"""The adding problem of Hochreiter & Schmidhuber (1997, experiment 4), fixed length ``T``.

    Each step carries a pair ``(value, marker)``: values ``~ U(-1, 1)``; exactly two steps are
    marked with 1.0 — the first among the first ``min(10, ceil(T/2))`` steps, the second among
    the first ``ceil(T/2)`` (distinct) — and the first and last steps carry the marker -1.0
    unless marked. The target, given only at the end, is

    .. math:: y = 0.5 + (X_1 + X_2) / 4 \in [0, 1],

    so the relevant inputs lie at least ``T/2`` steps before the output. The best constant
    prediction (0.5) has MSE :data:`ADDING_BASELINE_MSE` = 1/24. Difference from the paper:
    the length is exactly ``T`` rather than uniform on ``[T, T + T/10]``.
    """
    if T < 2:
        raise ValueError("the adding problem needs T >= 2")
    half = -(-T // 2)  # ceil(T / 2)
    x = np.zeros((T, batch, 2), dtype)
    x[..., 0] = rng.uniform(-1.0, 1.0, size=(T, batch))
    x[0, :, 1] = -1.0
    x[T - 1, :, 1] = -1.0
    i1 = rng.integers(0, min(10, half), size=batch)
    i2 = rng.integers(0, half - 1, size=batch) if half > 1 else np.zeros(batch, np.int64)
    i2 = np.where(i2 >= i1, i2 + 1, i2)  # distinct from i1, uniform on the rest of [0, half)
    cols = np.arange(batch)
    x[i1, cols, 1] = 1.0
    x[i2, cols, 1] = 1.0
    y = 0.5 + (x[i1, cols, 0] + x[i2, cols, 0]) / 4.0  # (B,)
    return SeqBatch(x, y.astype(dtype)[None, :, None], None, "regress")  # y (1, B, 1)


def copy_memory(rng: np.random.Generator, batch: int, T: int, n_copy: int = 5, n_symbols: int = 8,
                dtype=np.float32) -> SeqBatch:
    r"""The copy-memory task (Hochreiter & Schmidhuber 1997, in the form of Arjovsky et al. 2016).

    Input ids, length ``N + T + N`` (``N = n_copy``, ``K = n_symbols``)::

        s_1 .. s_N  blank * (T - 1)  delimiter  blank * N      s_i ~ U{0..K-1}, blank = K, delim = K+1

    one-hot to ``x (N+T+N, B, K+2)``. The target is ``s_1 .. s_N`` on the last ``N`` steps,
    ``y (N, B)``: symbol ``i`` is recalled ``T + N`` steps after it was shown. Only those ``N``
    steps are scored, so a memoryless predictor's best cross-entropy is ``log K`` nats and its
    accuracy ``1/K``.
    """
    if T < 1 or n_copy < 1 or n_symbols < 2:
        raise ValueError("copy_memory needs T >= 1, n_copy >= 1, n_symbols >= 2")
    N, K = n_copy, n_symbols
    L = N + T + N
    ids = np.full((L, batch), K, np.int64)  # (L, B) blanks
    s = rng.integers(0, K, size=(N, batch))  # (N, B)
    ids[:N] = s
    ids[N + T - 1] = K + 1
    x = np.eye(K + 2, dtype=dtype)[ids]  # (L, B, K+2)
    return SeqBatch(x, s.astype(np.int64), None, "class")
