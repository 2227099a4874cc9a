"""Reusable scratch arrays, so that a training step does not page-fault its large buffers anew.

A training step allocates the same large arrays every time (the recurrent caches ``(T, B, G*H)``,
their gradients, the logits). Fresh allocations of that size come from ``mmap`` and every page
is faulted in and zeroed by the kernel on first touch: on a virtual machine that is 5-20% of
an LSTM step. :func:`empty` hands out ``np.empty``-like arrays from a pool keyed by
``(shape, dtype)`` and reuses one only when nothing else refers to it any more (checked with the
reference count, which every NumPy view of the array contributes to through ``.base``), so an
array the caller still holds, or any view of it, is never handed out twice.

- Arrays below :data:`MIN_BYTES` and non-NumPy arrays (CuPy has its own memory pool) are plain
  ``xp.empty``.
- The pool keeps at most :data:`MAX_BYTES` of arrays; beyond that, free arrays are dropped
  oldest first, or the new array is simply not pooled. ``RNNLAB_WORKSPACE_MB`` sets the bound
  (``0`` disables the pool); :func:`release` empties it.
- Contents are undefined, exactly as with ``np.empty``.
"""
from __future__ import annotations

import os
import sys
import threading

import numpy as np

MIN_BYTES = 1 << 18
"""Smaller arrays are not pooled (``np.empty`` is cheap for them)."""

MAX_BYTES = int(float(os.environ.get("RNNLAB_WORKSPACE_MB", "2048")) * (1 << 20))
"""Upper bound on the bytes the pool keeps alive."""

_lock = threading.Lock()
_pool: dict[tuple, list] = {}  # (shape, dtype) -> arrays, oldest first
_bytes = 0


def _refs_when_free() -> int:
    """The reference count :func:`_is_free` sees for an array that only the pool holds
    (calibrated, since it depends on the interpreter)."""
    probe = [np.empty(1)]
    return _count(probe, 0)


def _count(lst, i) -> int:
    return sys.getrefcount(lst[i])


_FREE = _refs_when_free()


def empty(shape, dtype, xp=np):
    """An uninitialised array like ``xp.empty(shape, dtype)``, reused from the pool when one of
    the same shape and dtype is no longer referenced anywhere else."""
    global _bytes
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    nbytes = dtype.itemsize
    for s in shape:
        nbytes *= s
    if xp is not np or nbytes < MIN_BYTES or MAX_BYTES <= 0:
        return xp.empty(shape, dtype)
    key = (shape, dtype.str)
    with _lock:
        lst = _pool.get(key)
        if lst is not None:
            for i in range(len(lst)):
                if _count(lst, i) == _FREE:
                    a = lst.pop(i)
                    lst.append(a)  # most recently used last
                    return a
        if _bytes + nbytes > MAX_BYTES:
            _evict(_bytes + nbytes - MAX_BYTES)
        a = np.empty(shape, dtype)
        if _bytes + nbytes <= MAX_BYTES:
            _pool.setdefault(key, []).append(a)
            _bytes += nbytes
        return a


def _evict(need: int) -> None:
    """Drop free arrays (oldest first within each key) until ``need`` bytes are released."""
    global _bytes
    for key in list(_pool):
        lst = _pool[key]
        i = 0
        while i < len(lst) and need > 0:
            if _count(lst, i) == _FREE:
                a = lst.pop(i)
                _bytes -= a.nbytes
                need -= a.nbytes
            else:
                i += 1
        if not lst:
            del _pool[key]
        if need <= 0:
            return


def release() -> None:
    """Forget every pooled array (arrays still in use stay valid; they are just not reused)."""
    global _bytes
    with _lock:
        _pool.clear()
        _bytes = 0


def pooled_bytes() -> int:
    """Bytes of arrays the pool currently keeps."""
    return _bytes
