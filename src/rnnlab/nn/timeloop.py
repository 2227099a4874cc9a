"""Whole loops over time, compiled with numba: the recurrent GEMM and the fused step kernel of
every step in one call that holds no GIL.

The layers' NumPy loop (``recurrent.py``) runs, per time step, ``np.matmul`` and one kernel of
:mod:`rnnlab.nn.fused`; each call costs Python time, and each takes and releases the GIL. Here
the same two operations run inside one compiled loop per layer and direction: the GEMM is a
direct call of the ``cblas_?gemm`` that NumPy's ``matmul`` itself ends in (found by
:mod:`rnnlab.nn.blas`), the kernel is the same compiled function, so the results are the NumPy
loop's, bit for bit for two or more rows (with one row NumPy calls a matrix-vector product
instead, and results differ in the last bits). What it buys: the Python of each time step (about
5% of a step at H = 128 on one core), and threads that train separate parts of a batch
(:mod:`rnnlab.lm.shards`) no longer queue for the GIL at every time step, only between layers.

Per step, with ``(t, prev, cur)`` from :func:`_step` (forward: ``S[t+1]`` holds ``h_t``; reverse:
``S[t]``)::

    forward    hh = S[prev] @ W_hh^T;   cell_forward(A[t], hh, ...) -> S[cur] (C[cur])
    backward   cell_backward(dy[t], dnext, ...) -> dA[t];   dnext = dA[t] @ W_hh
    padding    rows with keep[t]: the state (forward) or dnext (backward) is carried past the step

Shapes: ``A, dA (T, B, G*H)``; ``S, C (T+1, B, H)``; ``TC, HN, DH, dy (T, B, H)``; ``keep (T, B,
1)`` bool; ``m (T, B)`` float; ``W_hh (G*H, H)``. The GEMM operands must be C-contiguous (checked
when the loop is compiled), the other arrays may have any strides; ``dy``, ``m``, ``keep``, ``b``
and ``b_hn`` may be ``None``.

Never imported at ``import rnnlab``; :func:`loops_for` is the entry point, and ``None`` from it
(no numba, no OpenBLAS found, a failed self-check) means the NumPy loop runs instead.
"""
from __future__ import annotations

import functools
import threading
import warnings

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from . import blas, fused

_OPTS = dict(cache=True, nogil=True)
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112  # CBLAS enum values


@intrinsic
def _gemm(typingctx, addr, width, trans_b, a, b, c):
    """``c = a @ b.T`` (``trans_b``) or ``c = a @ b`` through the ``cblas_?gemm`` at ``addr``;
    ``width`` is an int32 or int64 value whose *type* gives the BLAS's integer width.
    ``a (M, K)``, ``b (N, K)`` or ``(K, N)``, ``c (M, N)``: C-contiguous, one float dtype."""
    arrays = (a, b, c)
    if not all(isinstance(x, types.Array) and x.ndim == 2 and x.layout == "C" for x in arrays):
        return None
    if not a.dtype == b.dtype == c.dtype or a.dtype not in (types.float32, types.float64):
        return None
    if not isinstance(width, types.Integer) or width.bitwidth not in (32, 64):
        return None
    sig = types.void(addr, width, trans_b, a, b, c)

    def codegen(context, builder, signature, args):
        addr_v, _, trans_v, a_v, b_v, c_v = args
        i32, iw = ir.IntType(32), ir.IntType(width.bitwidth)
        fl = context.get_value_type(a.dtype)
        A = context.make_array(a)(context, builder, a_v)
        Bm = context.make_array(b)(context, builder, b_v)
        C = context.make_array(c)(context, builder, c_v)
        m, k = cgutils.unpack_tuple(builder, A.shape, 2)
        _, ldb = cgutils.unpack_tuple(builder, Bm.shape, 2)
        _, n = cgutils.unpack_tuple(builder, C.shape, 2)

        def w(v):  # intp -> the BLAS's integer (no dimension here comes near 2^31)
            if iw.width < v.type.width:
                return builder.trunc(v, iw)
            return builder.sext(v, iw) if iw.width > v.type.width else v

        trans = builder.select(context.cast(builder, trans_v, trans_b, types.boolean),
                               i32(_TRANS), i32(_NO_TRANS))
        fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, iw, iw, iw, fl, fl.as_pointer(), iw,
                                               fl.as_pointer(), iw, fl, fl.as_pointer(), iw])
        fn = builder.inttoptr(addr_v, fnty.as_pointer())
        builder.call(fn, [i32(_ROW_MAJOR), i32(_NO_TRANS), trans, w(m), w(n), w(k), fl(1.0), A.data, w(k),
                          Bm.data, w(ldb), fl(0.0), C.data, w(n)])
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always")
def _mm(addr, width, trans_b, a, b, c):
    """:func:`_gemm` after checking the shapes, so that a mismatch raises instead of reading or
    writing past an array: ``a (M, K)``, ``b (N, K)`` (``trans_b``) or ``(K, N)``, ``c (M, N)``."""
    K, N = (b.shape[1], b.shape[0]) if trans_b else (b.shape[0], b.shape[1])
    if a.shape[1] != K or c.shape[0] != a.shape[0] or c.shape[1] != N:
        raise ValueError("timeloop: GEMM operands with mismatched shapes")
    _gemm(addr, width, trans_b, a, b, c)


def _at(x, t):
    """``x[t]``, or ``None`` when ``x`` is ``None`` (compiled away)."""


@overload(_at)
def _at_impl(x, t):
    if isinstance(x, types.NoneType):
        return lambda x, t: None
    return lambda x, t: x[t]


def _carry(keep, t, src, dst):
    """``dst[r] = src[r]`` for the rows ``r`` with ``keep[t, r]`` (nothing when ``keep`` is None)."""


@overload(_carry)
def _carry_impl(keep, t, src, dst):
    if isinstance(keep, types.NoneType):
        return lambda keep, t, src, dst: None

    def impl(keep, t, src, dst):
        for r in range(dst.shape[0]):
            if keep[t, r, 0]:
                dst[r, :] = src[r, :]

    return impl


@njit(inline="always")
def _step(s, T, reverse):
    """The forward pass's ``s``-th step ``(t, prev, cur)`` into the state buffer."""
    if reverse:
        t = T - 1 - s
        return t, t + 1, t
    return s, s, s + 1


# ------------------------------------------------------------------------------ the loops
@njit(**_OPTS)
def rnn_forward(addr, width, S, W, b, relu, keep, reverse, tmp):
    T = S.shape[0] - 1
    for s in range(T):
        t, ip, ic = _step(s, T, reverse)
        _mm(addr, width, True, S[ip], W, tmp)
        fused.rnn_forward(S[ic], tmp, b, relu, S[ic])
        _carry(keep, t, S[ip], S[ic])


@njit(**_OPTS)
def rnn_backward(addr, width, dy, dnext, m, S, relu, W, keep, reverse, DH, dA):
    T = dA.shape[0]
    for s in range(T - 1, -1, -1):
        t, ip, ic = _step(s, T, reverse)
        fused.rnn_backward(_at(dy, t), dnext, _at(m, t), S[ic], relu, DH[t], dA[t])
        _mm(addr, width, False, dA[t], W, dnext)
        _carry(keep, t, DH[t], dnext)


@njit(**_OPTS)
def lstm_forward(addr, width, A, S, C, TC, W, b, keep, reverse, tmp):
    T = A.shape[0]
    for s in range(T):
        t, ip, ic = _step(s, T, reverse)
        _mm(addr, width, True, S[ip], W, tmp)
        fused.lstm_forward(A[t], tmp, b, C[ip], C[ic], TC[t], S[ic])
        _carry(keep, t, S[ip], S[ic])
        _carry(keep, t, C[ip], C[ic])


@njit(**_OPTS)
def lstm_backward(addr, width, dy, dnext, m, dcell, A, C, TC, W, keep, reverse, DH, dA):
    T = dA.shape[0]
    for s in range(T - 1, -1, -1):
        t, ip, ic = _step(s, T, reverse)
        fused.lstm_backward(_at(dy, t), dnext, _at(m, t), dcell, A[t], C[ip], TC[t], DH[t], dA[t])
        _mm(addr, width, False, dA[t], W, dnext)
        _carry(keep, t, DH[t], dnext)


@njit(**_OPTS)
def gru_forward(addr, width, A, S, HN, W, b, b_hn, keep, reverse, hh):
    T = A.shape[0]
    for s in range(T):
        t, ip, ic = _step(s, T, reverse)
        _mm(addr, width, True, S[ip], W, hh)
        fused.gru_forward(A[t], hh, b, b_hn, S[ip], HN[t], S[ic])
        _carry(keep, t, S[ip], S[ic])


@njit(**_OPTS)
def gru_backward(addr, width, dy, dnext, direct, m, A, HN, S, W, keep, reverse, DH, dHH, dAn):
    T = dHH.shape[0]
    for s in range(T - 1, -1, -1):
        t, ip, ic = _step(s, T, reverse)
        fused.gru_backward(_at(dy, t), dnext, direct, _at(m, t), A[t], HN[t], S[ip], DH[t], dHH[t], dAn[t])
        _mm(addr, width, False, dHH[t], W, dnext)
        _carry(keep, t, DH[t], dnext)


@njit(**_OPTS)
def _probe(addr, width, a, b, c_nt, c_nn):
    _mm(addr, width, True, a, b, c_nt)
    _mm(addr, width, False, a, b.T.copy(), c_nn)


# ------------------------------------------------------------------------------ entry point
def _width(bits: int):
    """The ``width`` argument of the loops: a value of the BLAS's integer type."""
    return np.int64(0) if bits == 64 else np.int32(0)


class Loops:
    """The loops above bound to one dtype's GEMM: ``loops.lstm_forward(A, S, ...)`` takes the
    arguments of the compiled function after ``addr, width``."""

    def __init__(self, addr: int, bits: int):
        width = _width(bits)
        for fn in (rnn_forward, rnn_backward, lstm_forward, lstm_backward, gru_forward, gru_backward):
            setattr(self, fn.__name__, functools.partial(fn, addr, width))


_LOOPS: dict = {}
_LOCK = threading.Lock()  # shard threads may ask for the loops at the same moment


def _self_check(addr, bits, dtype) -> bool:
    """Both GEMM forms through ``addr`` against ``np.matmul`` on a small odd-shaped product."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 5)).astype(dtype)
    b = rng.standard_normal((7, 5)).astype(dtype)
    c_nt, c_nn = np.zeros((3, 7), dtype), np.zeros((3, 7), dtype)
    _probe(addr, _width(bits), a, b, c_nt, c_nn)
    want = a @ b.T
    tol = 1e-5 if dtype == np.float32 else 1e-12
    return bool(np.allclose(c_nt, want, rtol=tol, atol=tol) and np.allclose(c_nn, want, rtol=tol, atol=tol))


def loops_for(dtype) -> Loops | None:
    """The compiled loops for float32/float64 arrays, or ``None`` where NumPy's OpenBLAS was not
    found, its self-check failed, or looking for it raised (then with one warning); the answer is
    worked out once per dtype and process."""
    dtype = np.dtype(dtype)
    if dtype in _LOOPS:  # decided: every call after the first (no lock on the layers' path)
        return _LOOPS[dtype]
    with _LOCK:
        if dtype not in _LOOPS:
            try:
                found = blas.gemm_address(dtype)
                ok = found is not None and _self_check(found[0], found[1], dtype)
            except Exception as e:  # a numba/llvmlite/threadpoolctl surprise: keep the NumPy loop
                warnings.warn(f"rnnlab: compiled loops over time unavailable ({type(e).__name__}: {e}); "
                              "using the Python loop", RuntimeWarning, stacklevel=2)
                ok = False
            _LOOPS[dtype] = Loops(*found) if ok else None
        return _LOOPS[dtype]
