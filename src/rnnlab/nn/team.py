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
thread with the packed engine. Member 0 is the calling thread; the others come from a pool of
daemon threads kept for the process. The compiled loops hold no GIL, so the members run at the
same time.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from . import spin

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
MAX_HELPERS = 64
"""Threads the pool may grow to (all teams of the process together: shards may run teams)."""


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        with _POOL_LOCK:
            if _POOL is None:
                _POOL = ThreadPoolExecutor(MAX_HELPERS, thread_name_prefix="rnnlab-team")
    return _POOL


def unit_bounds(H: int, team: int, quantum: int) -> list[int]:
    """``[j0_0, j0_1, ..., H]``: ``H`` units cut into at most ``team`` non-empty ranges of about
    equal size, inner bounds on multiples of ``quantum`` (a vector's lanes) where ``H`` allows."""
    q = quantum if H >= quantum * team else 1
    inner = sorted({min(H, max(q, round(H * p / team / q) * q)) for p in range(1, team)})
    return [0] + [b for b in inner if 0 < b < H] + [H]


def run(fn, member_args: list[tuple], sync) -> None:
    """``fn(*member_args[p])`` for every member ``p``: member 0 on this thread, the others on the
    pool; returns when all have finished. A member that raises sets the abort flag in ``sync``
    (so that the others stop waiting for it) and its exception is raised here."""
    team = len(member_args)
    if team == 1:
        fn(*member_args[0])
        return

    def member(args):
        try:
            fn(*args)
        except BaseException:
            spin.abort(sync, team)
            raise

    futures = [_pool().submit(member, args) for args in member_args[1:]]
    error = None
    try:
        member(member_args[0])
    except BaseException as e:  # still collect the helpers before raising
        error = e
    for f in futures:
        try:
            f.result()
        except BaseException as e:
            error = error or e
    if error is not None:
        raise error
