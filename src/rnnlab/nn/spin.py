"""A barrier for a team of threads that run one compiled loop together, one arrival per time step.

Each member of a team (:mod:`rnnlab.nn.team`) runs the same loop over time on its own part of
every step, and no member may start step ``s + 1`` before all have finished step ``s``. Waking a
sleeping thread costs tens of microseconds, more than a whole time step of a small model, so the
members spin instead: a member that has finished step ``s`` publishes ``s`` in its own slot of a
shared ``int64`` array (an atomic store with release order) and spins on the others' slots (atomic
loads with acquire order, a ``pause`` hint between reads) until each shows ``s`` or more::

    sync[q * STRIDE]          steps finished by member q (its own cache line)
    sync[team * STRIDE]       abort flag: a member that failed sets it, the others stop waiting

A waiting member calls ``sched_yield`` every 256 reads (:data:`YIELD_EVERY`) and after
:data:`SPINS` reads at every read, so that a team on a machine busier than it has cores (two
members the scheduler put on one core) still makes progress instead of spinning through the time
slice of the member it waits for. A team wants its cores to itself: on a busy machine the
planner (:mod:`rnnlab.lm.plan`) measures it slower and picks another plan.
"""
from __future__ import annotations

import platform

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

STRIDE = 16
"""Slots between two members' counters: 128 bytes, so no two share a cache line (or a pair)."""

SPINS = 1 << 12
"""Reads with a ``pause`` before a waiting member yields its core at every read (tens of
microseconds, longer than a member normally waits for another on an idle machine)."""

YIELD_EVERY = (1 << 8) - 1
"""Before that, a yield every 256 reads (a mask: ``n & YIELD_EVERY == YIELD_EVERY``)."""

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")


def new_sync(team: int) -> np.ndarray:
    """A zeroed sync array for ``team`` members and the abort flag."""
    return np.zeros((team + 1) * STRIDE, np.int64)


def _slot(context, builder, arrty, arr, i):
    a = context.make_array(arrty)(context, builder, arr)
    return cgutils.get_item_pointer(context, builder, arrty, a, [i], wraparound=False)


@intrinsic
def publish(typingctx, arr, i, v):
    """``arr[i] = v`` as an atomic store with release order (``arr`` int64, 1-D)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1):
        return None
    sig = types.void(arr, i, v)

    def codegen(context, builder, signature, args):
        ptr = _slot(context, builder, signature.args[0], args[0], args[1])
        val = context.cast(builder, args[2], signature.args[2], types.int64)
        builder.store_atomic(val, ptr, "release", 8)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def peek(typingctx, arr, i):
    """``arr[i]`` as an atomic load with acquire order (``arr`` int64, 1-D)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1):
        return None
    sig = types.int64(arr, i)

    def codegen(context, builder, signature, args):
        ptr = _slot(context, builder, signature.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "acquire", 8)

    return sig, codegen


@intrinsic
def relax(typingctx, yield_core):
    """One wait in a spin loop: the CPU's spin hint, and ``sched_yield()`` when ``yield_core``."""
    sig = types.void(yield_core)

    def codegen(context, builder, signature, args):
        if _X86:  # the PAUSE instruction (elsewhere the loop simply reads again)
            hint = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                  "llvm.x86.sse2.pause")
            builder.call(hint, [])
        go = context.cast(builder, args[0], signature.args[0], types.boolean)
        with builder.if_then(go, likely=False):
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
            builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always")
def arrive_and_wait(sync, me, team, step):
    """Publish that member ``me`` finished ``step`` and wait until every member of ``team`` has.
    Returns False when the abort flag was raised instead (the loop must stop)."""
    if team == 1:
        return True
    publish(sync, me * STRIDE, step)
    for q in range(team):
        if q == me:
            continue
        n = 0
        while peek(sync, q * STRIDE) < step:
            if peek(sync, team * STRIDE) != 0:
                return False
            relax(n >= SPINS or (n & YIELD_EVERY) == YIELD_EVERY)
            n += 1
    return True


def abort(sync: np.ndarray, team: int) -> None:
    """Raise the abort flag (from Python, for a member that failed before or inside its loop)."""
    sync[team * STRIDE] = 1
