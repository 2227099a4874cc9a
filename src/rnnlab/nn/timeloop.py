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

import contextlib
import functools
import threading
import warnings

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from . import blas, fused, packed, spin, workspace
from . import team as team_mod

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
def _check(trans_b, a, b, c):
    """Raise unless ``a (M, K)``, ``b (N, K)`` (``trans_b``) or ``(K, N)`` and ``c (M, N)`` fit, so
    that a mismatch raises instead of reading or writing past an array."""
    K, N = (b.shape[1], b.shape[0]) if trans_b else (b.shape[0], b.shape[1])
    if a.shape[1] != K or c.shape[0] != a.shape[0] or c.shape[1] != N:
        raise ValueError("timeloop: GEMM operands with mismatched shapes")


@njit(inline="always")
def _mm(addr, width, trans_b, a, b, c):
    """:func:`_gemm` after :func:`_check`."""
    _check(trans_b, a, b, c)
    _gemm(addr, width, trans_b, a, b, c)


def _at(x, t):
    """``x[t]``, or ``None`` when ``x`` is ``None`` (compiled away)."""


@overload(_at)
def _at_impl(x, t):
    if isinstance(x, types.NoneType):
        return lambda x, t: None
    return lambda x, t: x[t]


def _carry(keep, t, src, dst, j0, j1):
    """``dst[r, j0:j1] = src[r, j0:j1]`` for the rows ``r`` with ``keep[t, r]`` (nothing when
    ``keep`` is None)."""


@overload(_carry)
def _carry_impl(keep, t, src, dst, j0, j1):
    if isinstance(keep, types.NoneType):
        return lambda keep, t, src, dst, j0, j1: None

    def impl(keep, t, src, dst, j0, j1):
        for r in range(dst.shape[0]):
            if keep[t, r, 0]:
                dst[r, j0:j1] = src[r, j0:j1]

    return impl


def _product(g, trans_b, a, W, c):
    """The step's GEMM ``c = a @ W^T`` (``trans_b``) or ``c = a @ W`` by the engine ``g``: the
    BLAS's ``cblas_?gemm`` when ``g`` is ``(addr, width)``; the packed micro-kernel over this
    member's panels when ``g`` is ``(P, pcol, pw, p0, p1, tile)`` (:mod:`rnnlab.nn.packed`)."""


@overload(_product)
def _product_impl(g, trans_b, a, W, c):
    if len(g) == 2:
        return lambda g, trans_b, a, W, c: _mm(g[0], g[1], trans_b, a, W, c)
    def impl(g, trans_b, a, W, c):
        _check(trans_b, a, W, c)
        packed.gemm(a, g[0], g[1], g[2], c, g[3], g[4], g[5], False, packed.step_kc(g[0]))

    return impl


def _prepare(g, trans_b, W):
    """Pack this member's panels of ``W`` once before the loop (packed engine); nothing for the BLAS."""


@overload(_prepare)
def _prepare_impl(g, trans_b, W):
    if len(g) == 2:
        return lambda g, trans_b, W: None
    return lambda g, trans_b, W: packed.pack(W, trans_b, g[1], g[2], g[0], g[3], g[4])


@njit(inline="always")
def _step(s, T, reverse):
    """The forward pass's ``s``-th step ``(t, prev, cur)`` into the state buffer."""
    if reverse:
        t = T - 1 - s
        return t, t + 1, t
    return s, s, s + 1


# ------------------------------------------------------------------------------ the loops
# Every loop takes ``g`` (the GEMM engine, see _product) and ``u = (j0, j1, sync, me, team)``:
# this member computes the hidden units j0 <= j < j1 of every step (their gate columns of the
# forward GEMM, their columns of the backward one) and meets the team at the end of each step
# (spin.py). A lone member (team 1) has j0 = 0, j1 = H and never waits.
@njit(**_OPTS)
def rnn_forward(g, u, S, W, b, relu, keep, reverse, tmp):
    j0, j1, sync, me, team = u
    _prepare(g, True, W)
    T = S.shape[0] - 1
    for s in range(T):
        t, ip, ic = _step(s, T, reverse)
        _product(g, True, S[ip], W, tmp)
        fused.rnn_forward_units(S[ic], tmp, b, relu, S[ic], j0, j1)
        _carry(keep, t, S[ip], S[ic], j0, j1)
        if not spin.arrive_and_wait(sync, me, team, s + 1):
            return


@njit(**_OPTS)
def rnn_backward(g, u, dy, dnext, m, S, relu, W, keep, reverse, DH, dA):
    j0, j1, sync, me, team = u
    _prepare(g, False, W)
    T = dA.shape[0]
    for s in range(T - 1, -1, -1):
        t, ip, ic = _step(s, T, reverse)
        fused.rnn_backward_units(_at(dy, t), dnext, _at(m, t), S[ic], relu, DH[t], dA[t], j0, j1)
        if not spin.arrive_and_wait(sync, me, team, T - s):
            return
        _product(g, False, dA[t], W, dnext)
        _carry(keep, t, DH[t], dnext, j0, j1)


@njit(**_OPTS)
def lstm_forward(g, u, A, S, C, TC, W, b, keep, reverse, tmp):
    j0, j1, sync, me, team = u
    _prepare(g, True, W)
    T = A.shape[0]
    for s in range(T):
        t, ip, ic = _step(s, T, reverse)
        _product(g, True, S[ip], W, tmp)
        fused.lstm_forward_units(A[t], tmp, b, C[ip], C[ic], TC[t], S[ic], j0, j1)
        _carry(keep, t, S[ip], S[ic], j0, j1)
        _carry(keep, t, C[ip], C[ic], j0, j1)
        if not spin.arrive_and_wait(sync, me, team, s + 1):
            return


@njit(**_OPTS)
def lstm_backward(g, u, dy, dnext, m, dcell, A, C, TC, W, keep, reverse, DH, dA):
    j0, j1, sync, me, team = u
    _prepare(g, False, W)
    T = dA.shape[0]
    for s in range(T - 1, -1, -1):
        t, ip, ic = _step(s, T, reverse)
        fused.lstm_backward_units(_at(dy, t), dnext, _at(m, t), dcell, A[t], C[ip], TC[t], DH[t], dA[t], j0, j1)
        if not spin.arrive_and_wait(sync, me, team, T - s):
            return
        _product(g, False, dA[t], W, dnext)
        _carry(keep, t, DH[t], dnext, j0, j1)


@njit(**_OPTS)
def gru_forward(g, u, A, S, HN, W, b, b_hn, keep, reverse, hh):
    j0, j1, sync, me, team = u
    _prepare(g, True, W)
    T = A.shape[0]
    for s in range(T):
        t, ip, ic = _step(s, T, reverse)
        _product(g, True, S[ip], W, hh)
        fused.gru_forward_units(A[t], hh, b, b_hn, S[ip], HN[t], S[ic], j0, j1)
        _carry(keep, t, S[ip], S[ic], j0, j1)
        if not spin.arrive_and_wait(sync, me, team, s + 1):
            return


@njit(**_OPTS)
def gru_backward(g, u, dy, dnext, direct, m, A, HN, S, W, keep, reverse, DH, dHH, dAn):
    j0, j1, sync, me, team = u
    _prepare(g, False, W)
    T = dHH.shape[0]
    for s in range(T - 1, -1, -1):
        t, ip, ic = _step(s, T, reverse)
        fused.gru_backward_units(_at(dy, t), dnext, direct, _at(m, t), A[t], HN[t], S[ip], DH[t], dHH[t], dAn[t],
                                 j0, j1)
        if not spin.arrive_and_wait(sync, me, team, T - s):
            return
        _product(g, False, dHH[t], W, dnext)
        _carry(keep, t, DH[t], dnext, j0, j1)


@njit(**_OPTS)
def _probe(addr, width, a, b, c_nt, c_nn):
    _mm(addr, width, True, a, b, c_nt)
    _mm(addr, width, False, a, b.T.copy(), c_nn)


# ------------------------------------------------------------------------------ entry point
def _width(bits: int):
    """The ``width`` argument of the loops: a value of the BLAS's integer type."""
    return np.int64(0) if bits == 64 else np.int32(0)


_SETTINGS = threading.local()
ENGINES = ("blas", "packed")


@contextlib.contextmanager
def settings(gemm: str = "blas", team: int = 1):
    """Within the block, this thread's layers run their loops with the per-step GEMM ``gemm``
    (``"blas"``: NumPy's OpenBLAS, bit for bit the Python loop; ``"packed"``: the packed
    micro-kernel of :mod:`rnnlab.nn.packed`) and each step split over ``team`` threads by hidden
    units (:mod:`rnnlab.nn.team`; ``team > 1`` runs the packed GEMM). Outside any block: BLAS,
    one thread."""
    if gemm not in ENGINES or team < 1:
        raise ValueError(f"settings: gemm must be one of {ENGINES} and team >= 1, got {gemm!r}, {team}")
    old = getattr(_SETTINGS, "value", None)
    _SETTINGS.value = ("packed" if team > 1 else gemm, int(team))
    try:
        yield
    finally:
        _SETTINGS.value = old


def current() -> tuple[str, int]:
    """This thread's ``(gemm, team)`` (see :func:`settings`)."""
    return getattr(_SETTINGS, "value", None) or ("blas", 1)


_LONE = spin.new_sync(1)  # a team of one never touches it


class Loops:
    """The loops above for one dtype, as the layers call them: ``loops.lstm_forward(A, S, C, TC,
    W, b, keep, reverse, tmp)`` takes the arguments after ``g, u``; the engine and team come
    from :func:`settings`. ``blas`` is ``(address, width)`` of the OpenBLAS GEMM, or None when
    there is none (then only the packed engine runs)."""

    # loop -> (index of W_hh among the layer's arguments, forward (W^T) or backward (W) product)
    _SHAPES = {"rnn_forward": (1, True), "rnn_backward": (5, False), "lstm_forward": (4, True),
               "lstm_backward": (7, False), "gru_forward": (3, True), "gru_backward": (7, False)}

    def __init__(self, dtype, blas_gemm):
        self.dtype = np.dtype(dtype)
        self.blas = None if blas_gemm is None else (blas_gemm[0], _width(blas_gemm[1]))
        for name in self._SHAPES:
            setattr(self, name, functools.partial(self._run, name))

    def available(self) -> bool:
        """Whether this thread's settings can run here (the BLAS engine needs NumPy's OpenBLAS)."""
        gemm, team = current()
        return gemm == "packed" or self.blas is not None

    def _run(self, name, *args):
        fn = globals()[name]
        gemm, team = current()
        w_at, forward = self._SHAPES[name]
        W = args[w_at]
        GH, H = W.shape
        if gemm == "blas":
            fn(self.blas, (0, H, _LONE, 0, 1), *args)
            return
        tile = packed.TILE
        pcol, pw, members = _layout(GH, H, team, forward, self.dtype, tile)
        P = workspace.empty((len(pcol), H if forward else GH, packed.panel_width(self.dtype, tile)), self.dtype)
        sync = spin.new_sync(len(members))
        team_mod.run(fn, [((P, pcol, pw, p0, p1, tile), (j0, j1, sync, me, len(members)), *args)
                          for me, (p0, p1, j0, j1) in enumerate(members)], sync)


@functools.lru_cache(maxsize=256)
def _layout(GH: int, H: int, team: int, forward: bool, dtype, tile: int) -> tuple:
    """``(pcol, pw, members)``: the packed panels (of tile ``packed.TILES[tile]``) of a team's
    product and, per member, ``(p0, p1, j0, j1)``, its panels and hidden units. Forward (``W^T``,
    ``G H`` columns) a member's panels cover the gate columns ``g H + j`` of its units; backward
    (``W``, ``H`` columns) its units."""
    nr = packed.panel_width(dtype, tile)
    bounds = team_mod.unit_bounds(H, team, packed.lanes(dtype))
    segs, members = [], []
    for j0, j1 in zip(bounds[:-1], bounds[1:]):
        p0 = len(packed.panels(segs, nr)[0])
        segs += [(g * H + j0, g * H + j1) for g in range(GH // H)] if forward else [(j0, j1)]
        members.append((p0, len(packed.panels(segs, nr)[0]), j0, j1))
    pcol, pw = packed.panels(segs, nr)
    return pcol, pw, tuple(members)


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
    """The compiled loops for float32/float64 arrays under this thread's :func:`settings`, or
    ``None`` where they cannot run: the BLAS engine where NumPy's OpenBLAS was not found, its
    self-check failed, or looking for it raised (then with one warning). The lookup is made
    once per dtype and process."""
    dtype = np.dtype(dtype)
    loops = _LOOPS.get(dtype)
    if loops is None:
        with _LOCK:
            if dtype not in _LOOPS:
                try:
                    found = blas.gemm_address(dtype)
                    ok = found is not None and _self_check(found[0], found[1], dtype)
                except Exception as e:  # a numba/llvmlite/threadpoolctl surprise: no BLAS engine
                    warnings.warn(f"rnnlab: compiled loops over time unavailable ({type(e).__name__}: {e}); "
                                  "using the Python loop", RuntimeWarning, stacklevel=2)
                    ok = False
                _LOOPS[dtype] = Loops(dtype, found if ok else None)
            loops = _LOOPS[dtype]
    return loops if loops.available() else None
