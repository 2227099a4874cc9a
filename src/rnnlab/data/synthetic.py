"""Synthetic sequence tasks whose answer is known in closed form, for the experiments.

Every sampler takes an explicit ``np.random.Generator`` and returns a :class:`SeqBatch` of
host NumPy arrays, time-major:

====================  ============================  ======================  ==============================
task                  input ``x``                   target ``y``            what it needs
====================  ============================  ======================  ==============================
:func:`parity`        bits, one-hot ``(T, B, 2)``   ``(1, B)`` class        a 2-state automaton (XOR)
:func:`majority`      bits, one-hot ``(T, B, 2)``   ``(1, B)`` class        one unbounded counter
:func:`adding`        ``(T, B, 2)`` value, marker   ``(1, B, 1)`` real      two values, one T/2+ steps back
:func:`adding_hs`     ``(T', B, 2)``, T' ~ [T, 1.1T]  ``(1, B, 1)`` real    two values, T/2 to 1.1T back
:func:`copy_memory`   one-hot ``(T+2N, B, K+2)``    ``(T+2N, B)`` classes   N symbols over T+N steps
:func:`temporal_order` one-hot ``(T', B, 8)``        ``(1, B)`` class        two symbols' order, 0.4T+ back
====================  ============================  ======================  ==============================

Each long-lag task states its *memoryless baseline*: the best score of a predictor that keeps
nothing of the input it has seen (the constant that minimises the loss).

``lengths (B,)`` is set for the variable-length tasks (padding after each sequence's end is
zero); it is ``None`` for fixed-length ones. The target of a sequence-level task is read at each
sequence's own last step, so ``y`` has one output step (``S = 1``); the copy task has ``S = N``.

Shape legend: ``T`` time (the longest sequence of the batch), ``B`` batch, ``S`` output steps,
``K`` symbols, ``N`` symbols to copy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ADDING_BASELINE_MSE = 1.0 / 6.0
"""MSE of the best constant prediction (1.0) in the standard adding problem: ``Var[X1 + X2]`` with
``X1, X2 ~ U(0, 1)`` independent, ``= 2 / 12 = 1/6 ≈ 0.167``."""

def adding_hs_baseline(T: int) -> float:
    """MSE of the best constant prediction (0.5) in H&S's adding problem (:func:`adding_hs`):
    ``Var[(X1 + X2) / 4]`` with ``X ~ U(-1, 1)`` (variance 1/3), except that the value of the
    first pair is 0 when it is marked: with probability 1/10 for ``X1`` and ``0.9 / (T/2 - 2)``
    for ``X2``. About 0.0392 for ``T = 100``."""
    p2 = 0.9 / (T // 2 - 2)
    return ((1 - 0.1) / 3.0 + (1 - p2) / 3.0) / 16.0


def adding_hs_baseline_within(T: int, tol: float = 0.04) -> float:
    """Fraction of H&S adding targets within ``tol`` of the best constant prediction 0.5 (their
    success measure, scored on a memoryless predictor): ``P(|X1 + X2| < 4 tol)``. With both values
    ``U(-1, 1)`` the sum is triangular on ``[-2, 2]`` (``1 - (2 - a)^2 / 4`` for ``a = 4 tol``); with
    one of them 0 (the first pair marked, as in :func:`adding_hs_baseline`) it is ``a``; with both
    0 it is 1. About 0.156 for ``T = 100``."""
    a = 4.0 * tol
    p1, p2 = 0.1, 0.9 / (T // 2 - 2)
    both, one = 1.0 - (2.0 - a) ** 2 / 4.0, a
    return (1 - p1) * (1 - p2) * both + (p1 * (1 - p2) + p2 * (1 - p1)) * one + p1 * p2


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
    r"""The adding problem in its standard modern form (Le, Jaitly & Hinton 2015; Arjovsky, Shah &
    Bengio 2016), length exactly ``T``.

    Each step carries a pair ``(value, marker)``: values ``~ U(0, 1)``; exactly two markers are 1,
    one at a uniform position in the first half ``[0, T/2)`` and one in the second half
    ``[T/2, T)``; every other marker is 0. The target, read only at the end, is the sum of the two
    marked values,

    .. math:: y = X_1 + X_2 \in [0, 2],

    so the first relevant input lies on average ``3T/4`` steps before the output. The best
    constant prediction (1.0) has MSE :data:`ADDING_BASELINE_MSE` = 1/6.
    """
    if T < 2:
        raise ValueError("the adding problem needs T >= 2")
    half = T // 2
    x = np.zeros((T, batch, 2), dtype)
    x[..., 0] = rng.uniform(0.0, 1.0, size=(T, batch))
    cols = np.arange(batch)
    i1 = rng.integers(0, half, size=batch)
    i2 = rng.integers(half, T, size=batch)
    x[i1, cols, 1] = 1.0
    x[i2, cols, 1] = 1.0
    y = x[i1, cols, 0] + x[i2, cols, 0]  # (B,)
    return SeqBatch(x, y.astype(dtype)[None, :, None], None, "regress")  # y (1, B, 1)


def adding_hs(rng: np.random.Generator, batch: int, T: int, dtype=np.float32) -> SeqBatch:
    r"""The adding problem exactly as Hochreiter & Schmidhuber (1997, experiment 4) set it.

    Lengths uniform on ``[T, T + T/10]`` (a padded batch with ``lengths``). Each step carries
    ``(value, marker)``, values ``~ U(-1, 1)``. One of the first ten pairs is marked (its value is
    ``X_1``), then one of the first ``T/2 - 1`` still unmarked pairs (``X_2``); the other markers
    are 0 except the first and the last pair's, which are -1 (when the first pair is the one
    marked, its value is 0). The target at the sequence end is

    .. math:: y = 0.5 + (X_1 + X_2) / 4 \in [0, 1];

    a sequence counts as processed correctly when the absolute error is below 0.04. The best
    constant (0.5) has MSE :func:`adding_hs_baseline`. Both relevant values come in the first
    half: the network must hold ``X_1`` for at least ``T - 10`` steps.
    """
    if T < 22:
        raise ValueError("H&S's adding problem needs T >= 22 (markers among the first 10 and T/2 - 1 pairs)")
    lengths = rng.integers(T, T + T // 10 + 1, size=batch).astype(np.int64)
    Tm = int(lengths.max())
    cols = np.arange(batch)
    x = np.zeros((Tm, batch, 2), dtype)
    x[..., 0] = rng.uniform(-1.0, 1.0, size=(Tm, batch)) * (np.arange(Tm)[:, None] < lengths[None, :])
    x[0, :, 1] = -1.0
    x[lengths - 1, cols, 1] = -1.0
    i1 = rng.integers(0, 10, size=batch)
    m = T // 2 - 1  # the second marker: one of the first T/2 - 1 pairs other than i1
    i2 = rng.integers(0, m - 1, size=batch)
    i2 = np.where(i2 >= i1, i2 + 1, i2)  # uniform on [0, m) without i1 (i1 < 10 <= m)
    first = (i1 == 0) | (i2 == 0)
    x[0, first, 0] = 0.0  # the first pair's value is 0 when it is marked
    x[i1, cols, 1] = 1.0
    x[i2, cols, 1] = 1.0
    y = 0.5 + (x[i1, cols, 0] + x[i2, cols, 0]) / 4.0  # (B,)
    return SeqBatch(x, y.astype(dtype)[None, :, None], lengths, "regress")


def copy_memory(rng: np.random.Generator, batch: int, T: int, n_copy: int = 10, n_symbols: int = 8,
                dtype=np.float32) -> SeqBatch:
    r"""The copy task of Arjovsky, Shah & Bengio (2016) (after Hochreiter & Schmidhuber 1997).

    Ids (``N = n_copy``, ``K = n_symbols``; blank 0, symbols ``1..K``, delimiter ``K+1``), length
    ``T + 2N``::

        input   s_1 .. s_N   0 * (T - 1)   K+1   0 * N
        target  0 * (T + N)                      s_1 .. s_N

    one-hot to ``x (T+2N, B, K+2)``; ``y (T+2N, B)`` has a class at every step (``K + 1``
    classes: blank and the symbols), and every step is scored. Symbol ``i`` is recalled
    ``T + N`` steps after it was shown. The memoryless strategy — blanks until the delimiter,
    then uniform guesses — has cross-entropy ``N log K / (T + 2N)`` per step
    (:func:`copy_baseline`) and recalls ``1/K`` of the symbols.
    """
    if T < 1 or n_copy < 1 or n_symbols < 2:
        raise ValueError("copy_memory needs T >= 1, n_copy >= 1, n_symbols >= 2")
    N, K = n_copy, n_symbols
    L = T + 2 * N
    ids = np.zeros((L, batch), np.int64)  # (L, B) blanks
    s = rng.integers(1, K + 1, size=(N, batch))  # (N, B)
    ids[:N] = s
    ids[N + T - 1] = K + 1
    x = np.eye(K + 2, dtype=dtype)[ids]  # (L, B, K+2)
    y = np.zeros((L, batch), np.int64)
    y[-N:] = s
    return SeqBatch(x, y, None, "class")


def copy_baseline(T: int, n_copy: int = 10, n_symbols: int = 8) -> float:
    """Cross-entropy per step of the memoryless strategy in :func:`copy_memory`."""
    return float(n_copy * np.log(n_symbols) / (T + 2 * n_copy))


TEMPORAL_SYMBOLS = "abcdXYBE"
"""The one-hot alphabet of :func:`temporal_order`: distractors a-d, the relevant X and Y, begin
and end."""


def temporal_order(rng: np.random.Generator, batch: int, T: int, dtype=np.float32) -> SeqBatch:
    r"""The temporal-order task of Hochreiter & Schmidhuber (1997, experiment 6a), scaled by ``T``.

    Lengths uniform on ``[T, T + T/10]``; the sequence starts with ``B`` and ends with ``E``; every
    other element is a random distractor from ``{a, b, c, d}`` except two, at ``t_1 ~ U[T/10,
    2T/10]`` and ``t_2 ~ U[5T/10, 6T/10]``, each ``X`` or ``Y``. The class at the end is their
    order: ``XX, XY, YX, YY`` (0..3). ``T = 100`` is the paper's setting (lengths 100-110, ``t_1``
    in 10-20, ``t_2`` in 50-60). The first relevant symbol lies at least ``0.8 T`` steps before the
    output. Memoryless baseline: cross-entropy ``log 4``, accuracy 1/4.
    """
    if T < 20:
        raise ValueError("the temporal-order task needs T >= 20")
    lengths = rng.integers(T, T + T // 10 + 1, size=batch).astype(np.int64)
    Tm = int(lengths.max())
    cols = np.arange(batch)
    ids = rng.integers(0, 4, size=(Tm, batch))  # (T', B) distractors a-d
    ids[0] = 6  # B
    ids[lengths - 1, cols] = 7  # E
    t1 = rng.integers(T // 10, 2 * T // 10 + 1, size=batch)
    t2 = rng.integers(5 * T // 10, 6 * T // 10 + 1, size=batch)
    s1, s2 = rng.integers(0, 2, size=batch), rng.integers(0, 2, size=batch)  # 0 = X, 1 = Y
    ids[t1, cols] = 4 + s1
    ids[t2, cols] = 4 + s2
    valid = np.arange(Tm)[:, None] < lengths[None, :]  # (T', B)
    x = np.eye(8, dtype=dtype)[ids] * valid[:, :, None]  # (T', B, 8), zero on padding
    y = (2 * s1 + s2).astype(np.int64)[None, :]  # (1, B)
    return SeqBatch(x, y, lengths, "class")
