"""A team of threads that runs one compiled loop over time together, each on its own hidden units.

A time step of a recurrent layer is one GEMM with ``B`` rows followed by an elementwise kernel,
and step ``t + 1`` needs all of step ``t``. Splitting the batch's rows over threads halves each
GEMM's rows (which hurts small batches, and leaves the weights to be read by every thread);
splitting the hidden units keeps all rows, and each member reads only the weight rows of its own
units::

    member p owns the units  j0_p <= j < j1_p          (bounds on whole vectors, see unit_bounds)
    forward   hh[:, gH + j] = h_{t-1} @ W_hh[gH + j]^T   for its j and every gate g; cell step for its j
    backward  cell step for its j -> da_t[:, gH + j];  barrier;  dh[:, j] = da_t @ W_hh[:, j]
    end of every step: a spin barrier (:mod:`rnnlab.nn.spin`)

The per-step products use the packed micro-kernel (:mod:`rnnlab.nn.packed`), which sums every
element in the same order whichever member computes it, so a team gives the same bits as one
thread with the packed engine.

:func:`run` starts a team: member 0 is the calling thread, the others are helper threads kept for
the process. A helper that has finished its part spins for a short while (:data:`IDLE_SPINS`)
waiting for the next one before it sleeps, so the many short parts of a training step (every
layer and direction, forward and backward, and the whole-sequence products) are handed over in
microseconds rather than through a thread wake-up each.
"""
from __future__ import annotations

import threading

import numpy as np
from numba import njit

from . import spin

IDLE_SPINS = 1 << 13
"""Reads a helper makes (a ``pause`` between two) waiting for its next part before it sleeps:
about a hundred microseconds, which spans the gaps inside a training step but not between steps."""

WAIT_SPINS = 1 << 14
"""Reads the caller makes waiting for the helpers to finish before it sleeps until they do."""


@njit(nogil=True, cache=True)
def _wait_at_least(flags, i, value, spins):
    """Spin until ``flags[i] >= value`` (True) or ``spins`` reads have passed (False)."""
    n = 0
    while spin.peek(flags, i) < value:
        if n >= spins:
            return False
        spin.relax((n & spin.YIELD_EVERY) == spin.YIELD_EVERY)
        n += 1
    return True


class _Helper:
    """A thread that runs the parts handed to it: ``flags[0]`` counts the parts posted,
    ``flags[STRIDE]`` the parts finished."""

    def __init__(self) -> None:
        self.flags = np.zeros(2 * spin.STRIDE, np.int64)
        self.job = None
        self.error: BaseException | None = None
        self.wake, self.done = threading.Event(), threading.Event()
        self.posted = 0
        threading.Thread(target=self._loop, name="rnnlab-team", daemon=True).start()

    def _loop(self) -> None:
        seen = 0
        while True:
            if not _wait_at_least(self.flags, 0, seen + 1, IDLE_SPINS):
                self.wake.wait()
                self.wake.clear()
                continue
            seen += 1
            fn, args, sync, size = self.job
            try:
                fn(*args)
            except BaseException as e:  # reported to the caller; the others stop waiting for us
                self.error = e
                spin.abort(sync, size)
            self.job = None
            self.flags[spin.STRIDE] = seen
            self.done.set()

    def post(self, fn, args, sync, size) -> None:
        self.error = None
        self.done.clear()
        self.job = (fn, args, sync, size)
        self.posted += 1
        self.flags[0] = self.posted
        self.wake.set()

    def wait(self) -> BaseException | None:
        while not _wait_at_least(self.flags, spin.STRIDE, self.posted, WAIT_SPINS):
            self.done.wait()
            self.done.clear()
        return self.error


_IDLE: list[_Helper] = []
_LOCK = threading.Lock()


def _take(n: int) -> list[_Helper]:
    """``n`` helpers no other team is using (new ones when there are not enough)."""
    with _LOCK:
        got = [_IDLE.pop() for _ in range(min(n, len(_IDLE)))]
    return got + [_Helper() for _ in range(n - len(got))]


def _give_back(helpers: list[_Helper]) -> None:
    with _LOCK:
        _IDLE.extend(helpers)


def unit_bounds(H: int, team: int, quantum: int) -> list[int]:
    """``[j0_0, j0_1, ..., H]``: ``H`` units cut into at most ``team`` non-empty ranges of about
    equal size, inner bounds on multiples of ``quantum`` (a vector's lanes) where ``H`` allows."""
    q = quantum if H >= quantum * team else 1
    inner = sorted({min(H, max(q, round(H * p / team / q) * q)) for p in range(1, team)})
    return [0] + [b for b in inner if 0 < b < H] + [H]


def run(fn, member_args: list[tuple], sync) -> None:
    """``fn(*member_args[p])`` for every member ``p`` (``fn`` compiled without the GIL): member 0
    on this thread, the others on helper threads; returns when all have finished. A member that
    raises sets the abort flag in ``sync`` (so that the others stop waiting for it) and its
    exception is raised here."""
    size = len(member_args)
    if size == 1:
        fn(*member_args[0])
        return
    helpers = _take(size - 1)
    try:
        for h, args in zip(helpers, member_args[1:]):
            h.post(fn, args, sync, size)
        error = None
        try:
            fn(*member_args[0])
        except BaseException as e:  # still collect the helpers before raising
            spin.abort(sync, size)
            error = e
        for h in helpers:
            error = error or h.wait()
    finally:
        _give_back(helpers)
    if error is not None:
        raise error
