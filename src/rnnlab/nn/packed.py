"""A GEMM for the per-step recurrent products, with the constant operand packed once per loop.

Each time step of a recurrent loop multiplies a small ``(B, K)`` block (the state, or the gate
gradients) by the same weight matrix: ``hh = h_{t-1} W_hh^T`` forward, ``dh = da_t W_hh``
backward. A BLAS packs the weight operand into its own panel layout at every call; for the
``B = 16..64`` rows of a time step that copy is a large part of the call (OpenBLAS runs
32 x 128 x 512 at about half its large-matrix rate). Here the weights are packed once per loop
over time (:func:`pack`) and each step runs only the register-blocked micro-kernel over them::

    packed panel p:   P[p, k, l] = B[k, col_p + l]      l < width_p <= NR; zero beyond
    c[:, col_p : col_p + width_p] = a @ B[:, col_p : col_p + width_p]      for p in [p0, p1)

``B`` is ``W^T`` (``transpose=True``, forward) or ``W`` (backward); panels are ``NR`` columns
wide (the last panel of a segment may be narrower) and can be given any column segments, so a
thread can own exactly the gate columns of its hidden units (:mod:`rnnlab.nn.teamloop`).

The micro-kernel (:func:`_tile`) is LLVM vector IR emitted by a numba intrinsic, compiled for
the CPU numba targets: ``MR`` rows by ``NV`` vectors of ``VW`` lanes held in registers over the
whole ``k`` loop, one broadcast of ``a[r, k]`` and one fused multiply-add per vector and row.
Each ``c`` element is one chain ``fma(a[r, K-1], b[K-1], ... fma(a[r, 0], b[0], c0))`` over
the whole of ``k`` in order (``c0 = 0``, or ``c``'s value when adding), whatever the panel, row
block, block of ``k`` or thread that computes it: a block of ``k`` stores its partial chain in
``c`` and the next block continues it from there. So results do not depend on how the columns,
rows or ``k`` are split, nor on the tile shape (they do differ from a BLAS in the last bits).
Two tile shapes (:data:`TILES`) by the vector ISA numba compiles for: AVX-512 (32 registers of
64 bytes), AVX/AVX2 (16 of 32 bytes), else SSE (16 of 16 bytes); the per-step products' tile
(:data:`TILE`) is chosen by timing the training step (:func:`rnnlab.lm.plan.layout`), and each
whole-sequence product's (:func:`matmul`) by timing that product (:func:`schedule`).

Shapes: ``a (M, K)`` rows with unit column stride; ``W (N, K)`` (``transpose``) or ``(K, N)``;
``P (panels, K, NR)``; ``c (M, N)`` rows with unit column stride. float32 or float64.
"""
from __future__ import annotations

import functools
import time

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils, config
from numba.extending import intrinsic, overload

from . import spin, workspace
from . import team as team_mod

_OPTS = dict(cache=True, nogil=True)


_PROBE = """
define void @probe(<16 x float>* %p) {
  %v = load <16 x float>, <16 x float>* %p
  %w = fadd <16 x float> %v, %v
  store <16 x float> %w, <16 x float>* %p
  ret void
}
"""


def _vector_bytes() -> int:
    """Bytes per vector register of the code numba generates: a 16-lane add compiled by numba's
    own target machine (its CPU name and features, e.g. ``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES``)
    comes out on zmm (64), ymm (32) or xmm (16) registers. Should the probe fail, the features
    numba was given (or the host's) decide."""
    try:
        import llvmlite.binding as ll
        from numba.core.registry import cpu_target

        tm = cpu_target.target_context.codegen()._tm
        mod = ll.parse_assembly(_PROBE)
        mod.triple = tm.triple
        asm = tm.emit_assembly(mod)
        return 64 if "zmm" in asm else 32 if "ymm" in asm else 16
    except Exception:  # a numba without the private target machine: read the features instead
        feats = config.CPU_FEATURES
        if feats is None:
            import llvmlite.binding as ll

            feats = ll.get_host_cpu_features().flatten()
        on = {f[1:] for f in feats.split(",") if f.startswith("+")}
        return 64 if "avx512f" in on else 32 if "avx" in on else 16


VECTOR_BYTES = _vector_bytes()
TILES = {64: ((4, 6), (3, 8)), 32: ((2, 6), (3, 4)), 16: ((2, 6), (3, 4))}[VECTOR_BYTES]
"""The two register tiles ``(NV, MR)`` of the vector ISA: vectors per row and rows (accumulators
``NV * MR``, beside ``NV`` vectors of the panel and one broadcast; 32 registers with AVX-512, 16
else). Which is faster depends on the CPU and the shapes, so the planner times both
(:func:`rnnlab.lm.plan.layout`):
on an Intel Ice Lake the 8 x 3 tile ran LSTM's per-step products 15-30 % faster than the 6 x 4
(a row of the panel, read from L2, feeds eight rows instead of six, and 8 divides the usual
batches), while the RNN's products of ``H = 128`` or ``256`` columns, which 48-column panels cut
unevenly, ran slower."""

TILE = 0
"""The index in :data:`TILES` of the tile in force (see :func:`set_layout`)."""

_MR = tuple(mr for nv, mr in TILES)  # rows per tile, by index: a constant of the compiled loops


def lanes(dtype) -> int:
    """Lanes ``VW`` per vector for ``dtype``."""
    return VECTOR_BYTES // np.dtype(dtype).itemsize


def panel_width(dtype, tile: int | None = None) -> int:
    """``NR``: the columns of one packed panel of tile ``tile`` (default: the one in force)."""
    return lanes(dtype) * TILES[TILE if tile is None else tile][0]


# ------------------------------------------------------------------------------ micro-kernel
def _micro_kernel(NV: int, MR: int):
    """The micro-kernel of the tile ``(NV, MR)``, compiled for ``a``'s dtype (see :func:`_tile_kernel`)."""

    def tile(typingctx, a, panel, c, m, nv, add):
        return _tile_kernel(NV, MR, a, panel, c, m, nv, add)

    return intrinsic(tile)


def _tile_kernel(NV, MR, a, panel, c, m, nv, add):
    """``c[:m, :nv] (+)= a[:m] @ panel[:, :nv]`` for ``1 <= m <= MR``, ``1 <= nv <= NR``: ``a``
    and ``c`` are 2-D views starting at the tile's first row (and column; ``a`` may have any
    strides, ``c`` unit column stride), ``panel (K, >= nv)`` with unit column stride and any row
    stride (a packed panel, or a block of ``B`` itself); ``add``: the chain of each element starts
    from its value in ``c`` (so a block of ``k`` continues the previous block's sum, or a product is
    added to ``c``) instead of from 0. Only the vectors that hold some of the
    ``nv`` columns are computed, and they are read whole: a row of ``panel`` must have
    ``ceil(nv / VW) * VW`` readable elements (a zero-padded panel, or ``nv`` a multiple of ``VW``)."""
    if not all(isinstance(x, types.Array) and x.ndim == 2 for x in (a, panel, c)):
        return None
    if not a.dtype == panel.dtype == c.dtype or a.dtype not in (types.float32, types.float64):
        return None
    VW = VECTOR_BYTES // (a.dtype.bitwidth // 8)
    sig = types.void(a, panel, c, m, nv, add)

    def codegen(context, builder, signature, args):
        i1, i32, i64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
        fl = context.get_value_type(a.dtype)
        vt, mt = ir.VectorType(fl, VW), ir.VectorType(i1, VW)
        bits, size = a.dtype.bitwidth, a.dtype.bitwidth // 8
        A = context.make_array(a)(context, builder, args[0])
        P = context.make_array(panel)(context, builder, args[1])
        C = context.make_array(c)(context, builder, args[2])
        mv = context.cast(builder, args[3], signature.args[3], types.int64)
        nvv = context.cast(builder, args[4], signature.args[4], types.int64)
        addv = context.cast(builder, args[5], signature.args[5], types.boolean)
        K = cgutils.unpack_tuple(builder, P.shape, 2)[0]
        ldp = builder.sdiv(cgutils.unpack_tuple(builder, P.strides, 2)[0], i64(size))
        sa = [builder.sdiv(x, i64(size)) for x in cgutils.unpack_tuple(builder, A.strides, 2)]
        ldc = builder.sdiv(cgutils.unpack_tuple(builder, C.strides, 2)[0], i64(size))
        fn, mod = builder.function, builder.module
        mstore = cgutils.get_or_insert_function(mod, ir.FunctionType(ir.VoidType(), [vt, vt.as_pointer(), i32, mt]),
                                                f"llvm.masked.store.v{VW}f{bits}.p0")
        mload = cgutils.get_or_insert_function(mod, ir.FunctionType(vt, [vt.as_pointer(), i32, mt, vt]),
                                               f"llvm.masked.load.v{VW}f{bits}.p0")
        vfma = cgutils.get_or_insert_function(mod, ir.FunctionType(vt, [vt, vt, vt]), f"llvm.fma.v{VW}f{bits}")
        zero = ir.Constant(vt, [0.0] * VW)
        splat0 = ir.Constant(ir.VectorType(i32, VW), [0] * VW)
        lane_ids = ir.Constant(ir.VectorType(i64, VW), list(range(VW)))

        def bcast(x, ty):
            return builder.shuffle_vector(builder.insert_element(ir.Constant(ty, ir.Undefined), x, i32(0)),
                                          ir.Constant(ty, ir.Undefined), splat0)

        # the next row tile's c (rows MR..2MR-1 of the view: the next tile of a panel in every loop
        # order here), prefetched for writing: its loads or stores then find it in the cache after
        # this tile's k loop. A prefetch never faults, so past the last row it is only wasted.
        i8p = ir.IntType(8).as_pointer()
        prefetch = cgutils.get_or_insert_function(mod, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                                  "llvm.prefetch.p0")
        for r in range(MR, 2 * MR):
            rowp = builder.gep(C.data, [builder.mul(i64(r), ldc)])
            for off in range(0, NV * VW * size, 64):  # each cache line of the tile's row
                line = builder.bitcast(builder.gep(rowp, [i64(off // size)]), i8p)
                builder.call(prefetch, [line, i32(1), i32(3), i32(1)])  # write, keep in all levels, data
        # one case per (rows, vectors): the vectors needed for nv columns
        nvec = builder.sdiv(builder.add(nvv, i64(VW - 1)), i64(VW))
        case = builder.add(builder.mul(builder.sub(mv, i64(1)), i64(NV)), builder.sub(nvec, i64(1)))
        end = fn.append_basic_block("tile.end")
        switch = builder.switch(case, end)
        for mm in range(1, MR + 1):
            for nn in range(1, NV + 1):
                head = fn.append_basic_block(f"tile.m{mm}v{nn}")
                switch.add_case(i64((mm - 1) * NV + nn - 1), head)
                builder.position_at_end(head)
                loop = fn.append_basic_block(f"tile.m{mm}v{nn}.loop")
                done = fn.append_basic_block(f"tile.m{mm}v{nn}.done")
                ptrs, masks, init = [], [], []  # c's vectors: where, which lanes, the chain's start
                for r in range(mm):
                    rowp = builder.gep(C.data, [builder.mul(i64(r), ldc)])
                    ptrs.append([builder.bitcast(builder.gep(rowp, [i64(v * VW)]), vt.as_pointer())
                                 for v in range(nn)])
                    masks.append([builder.icmp_signed("<", lane_ids, bcast(builder.sub(nvv, i64(v * VW)),
                                                                             ir.VectorType(i64, VW)))
                                  for v in range(nn)])
                    init.append([builder.select(addv, builder.call(mload, [ptrs[r][v], i32(size), masks[r][v],
                                                                            zero]), zero)
                                 for v in range(nn)])
                builder.cbranch(builder.icmp_signed(">", K, i64(0)), loop, done)
                builder.position_at_end(loop)
                k = builder.phi(i64)
                k.add_incoming(i64(0), head)
                acc = [[builder.phi(vt) for _ in range(nn)] for _ in range(mm)]
                for r in range(mm):
                    for v in range(nn):
                        acc[r][v].add_incoming(init[r][v], head)
                base = builder.mul(k, ldp)
                bv = [builder.load(builder.bitcast(builder.gep(P.data, [builder.add(base, i64(v * VW))]),
                                                   vt.as_pointer()), align=size) for v in range(nn)]
                kcol = builder.mul(k, sa[1])
                new = []
                for r in range(mm):
                    s = builder.load(builder.gep(A.data, [builder.add(builder.mul(i64(r), sa[0]), kcol)]))
                    ab = bcast(s, vt)
                    new.append([builder.call(vfma, [ab, bv[v], acc[r][v]]) for v in range(nn)])
                k1 = builder.add(k, i64(1))
                k.add_incoming(k1, loop)
                for r in range(mm):
                    for v in range(nn):
                        acc[r][v].add_incoming(new[r][v], loop)
                builder.cbranch(builder.icmp_signed("<", k1, K), loop, done)
                builder.position_at_end(done)
                res = [[builder.phi(vt) for _ in range(nn)] for _ in range(mm)]
                for r in range(mm):
                    for v in range(nn):
                        res[r][v].add_incoming(init[r][v], head)
                        res[r][v].add_incoming(new[r][v], loop)
                # plain stores, but a masked one for a last vector that ends past the nv columns
                # (the others are whole): on an AMD Zen 3 the masked stores made the per-step
                # products 4-33 % slower and the training step 3-18 % (docs/benchmarks.md, 17)
                for r in range(mm):
                    for v in range(nn - 1):
                        builder.store(res[r][v], ptrs[r][v], align=size)
                whole = fn.append_basic_block(f"tile.m{mm}v{nn}.whole")
                part = fn.append_basic_block(f"tile.m{mm}v{nn}.part")
                builder.cbranch(builder.icmp_signed(">=", nvv, i64(nn * VW)), whole, part)
                for bb, masked in ((whole, False), (part, True)):
                    builder.position_at_end(bb)
                    for r in range(mm):
                        if masked:
                            builder.call(mstore, [res[r][-1], ptrs[r][-1], i32(size), masks[r][-1]])
                        else:
                            builder.store(res[r][-1], ptrs[r][-1], align=size)
                    builder.branch(end)
        builder.position_at_end(end)
        return context.get_dummy_value()

    return sig, codegen


_tile0, _tile1 = (_micro_kernel(*shape) for shape in TILES)


@njit(inline="always")
def _tile(t, a, panel, c, m, nv, add):
    """The micro-kernel of tile ``TILES[t]`` (see :func:`_tile_kernel`)."""
    if t == 0:
        _tile0(a, panel, c, m, nv, add)
    else:
        _tile1(a, panel, c, m, nv, add)


# ------------------------------------------------------------------------------ GEMM and packing
KC = 128
"""The smallest block of ``k``: the whole products time it against :data:`KC_ROWS`
(:func:`candidates`); the per-step products run blocks of :func:`step_kc`, a multiple of it. The
blocking changes no bit (each element's sum is one chain over ``k``, see the module's docstring)."""

L1_PANEL = 32768
"""Bytes of a panel's block of ``k`` in the per-step products (:func:`step_kc`)."""


@njit(inline="always")
def step_kc(P):
    """The block of ``k`` of a per-step product over the panels ``P (panels, K, NR)``: the most
    multiples of :data:`KC` whose block of a panel (``kc x NR``) fits :data:`L1_PANEL` bytes, so
    that it stays in the L1 cache while the row tiles pass, instead of being read from L2 by each
    tile, and the ``c`` tiles are loaded and stored as few times as that allows. 128 with the
    AVX-512 tiles (48- and 64-column panels), 512 and 256 with AVX2's (16 and 24 columns): on an
    Intel Ice Lake with AVX2 forced, a loop of 100 steps of ``64 x 512 x 512`` ran at 93 GFLOP/s
    with 512 against 85-88 with 128 (6 x 2 tiles), with AVX-512 (8 x 3 tiles) at 116 with 128
    against 105 with 512."""
    return max(KC, L1_PANEL // (P.shape[2] * P.itemsize) // KC * KC)

KC_ROWS = 512
"""The other block of ``k`` of the whole products: where the tiles read ``a`` along its rows
(``dA W``, ``x W^T``) they read runs of this many elements, and shorter runs were mostly slower
there (on an Intel Ice Lake, ``dA W`` at configs B and C 90 and 87 GFLOP/s with blocks of 512, 78
with 128), while a transposed ``a`` (``dA^T h``) ran faster with :data:`KC` (read in place, 60, 63
and 57 GFLOP/s at configs A, B and C against 50, 53 and 47: docs/benchmarks.md, point 13)."""

MC = 16
"""Row tiles per block in the whole-sequence products (:func:`_rows`): 96 rows with six-row
tiles, ``96 x KC_ROWS`` floats = 192 KB, which stays in the L2 cache beside a panel's block (128
rows, 256 KB, with eight-row tiles)."""


def _panel(P, p, col, w, k0, k1):
    """Rows ``k0:k1`` of panel ``p``: of the packed panels ``P (panels, K, NR)``, or, for a 2-D
    ``P``, of ``B`` itself (``P = B (K, N)``, unit column stride, every panel's width ``w`` a
    multiple of ``VW``): ``B[k0:k1, col : col + w]``."""


@overload(_panel)
def _panel_impl(P, p, col, w, k0, k1):
    if P.ndim == 3:
        return lambda P, p, col, w, k0, k1: P[p, k0:k1]
    return lambda P, p, col, w, k0, k1: P[k0:k1, col : col + w]


@njit(**_OPTS)
def gemm(a, P, pcol, pw, c, p0, p1, t, add=False, kc=KC):
    """``c[:, pcol[p] : pcol[p] + pw[p]] (+)= a @ panel p`` for the panels ``p0 <= p < p1`` by
    tile ``TILES[t]`` (``P``: panels as wide as that tile's, packed, or ``B`` itself, see
    :func:`_panel`; the same bits either way, for either tile and any block ``kc`` of ``k``)."""
    M, K = a.shape[0], P.shape[-2]
    MR = _MR[t]
    for k0 in range(0, max(K, 1), kc):
        k1 = min(K, k0 + kc)
        ak = a[:, k0:k1]
        for p in range(p0, p1):
            col, w = pcol[p], pw[p]
            panel = _panel(P, p, col, w, k0, k1)
            for r in range(0, M, MR):
                _tile(t, ak[r:], panel, c[r:, col:], min(MR, M - r), w, add or k0 > 0)


@njit(**_OPTS)
def pack(W, transpose, pcol, pw, P, p0, p1):
    """Fill panels ``p0 <= p < p1`` of ``P (panels, K, NR)``: ``P[p, k, l] = B[k, pcol[p] + l]``
    for ``l < pw[p]``, zero beyond, with ``B = W^T`` (``transpose``) or ``W``. The transposed
    copy goes in blocks of 16 ``k``: contiguous reads of ``W``'s rows, and the 16 panel rows being
    written stay in the L1 cache. The plain copy goes row by row of ``W``, each row into every
    panel: ``W`` is read once, in order (panel by panel, each panel read one cache line from every
    row of ``W``, which for ``h (T B, H)`` in ``dA^T h`` came from memory: 12.7 ms against 2.9 for
    ``6400 x 512`` with AVX2's 16-column panels, Intel Ice Lake)."""
    NR = P.shape[2]
    K = P.shape[1]
    if not transpose:  # row by row of W: each row read once, in order, into every panel
        for k in range(K):
            src = W[k]
            for p in range(p0, p1):
                col, w = pcol[p], pw[p]
                dst = P[p, k]
                for l in range(w):
                    dst[l] = src[col + l]
    for p in range(p0, p1):
        col, w = pcol[p], pw[p]
        panel = P[p]
        if transpose:
            for k0 in range(0, K, 16):
                k1 = min(K, k0 + 16)
                for l in range(w):
                    src = W[col + l]
                    for k in range(k0, k1):
                        panel[k, l] = src[k]
        for k in range(K):
            for l in range(w, NR):
                panel[k, l] = 0


def panels(segments, nr: int) -> tuple[np.ndarray, np.ndarray]:
    """``(pcol, pw)`` int64: each column segment ``(lo, hi)`` cut into panels of at most ``nr``
    columns, in order."""
    cols, widths = [], []
    for lo, hi in segments:
        for c in range(lo, hi, nr):
            cols.append(c)
            widths.append(min(nr, hi - c))
    return np.asarray(cols, np.int64), np.asarray(widths, np.int64)


# ------------------------------------------------------------------------------ whole matrices
@njit(inline="always")
def _strips(ak, at, strip, r0, k0, t):
    """``strip[j, k, i] = ak[j MR + i, k]``: every row of a block ``ak`` of ``a``'s columns
    ``k0 : k0 + kc`` (``a``'s rows from ``r0`` on), copied tile by tile, ``k``-major, for
    :func:`_rows`. With ``at`` (``a``'s transpose, C-ordered; ``a = dA^T``) the copy reads ``at``
    16 rows at a time, each row's run of ``M`` elements from memory once and in order, and
    deals those 16 ``k`` out to every tile's strip, which is then written in order too (row by row
    of ``at`` it would write one element every ``kc MR`` floats, all in one cache set). Copied tile
    by tile over all of ``k`` instead, each tile reads a few elements of every row of ``at``, rows
    a page apart: on an Intel Ice Lake (AVX-512) that copy took 20 ms of the 122 of LSTM's ``dA^T
    h`` at config C, this one 7.5 (NumPy reads ``dA`` in 5.3). Without ``at``: element by element
    through ``a``'s strides."""
    M, kc = ak.shape
    MR = _MR[t]
    full = M // MR  # whole row tiles
    if at.shape[0]:
        for q0 in range(0, kc, 16):
            q1 = min(kc, q0 + 16)
            src = at[k0 + q0 : k0 + q1, r0 : r0 + M]  # (q1 - q0, M)
            for j in range(full):
                s, o = strip[j], j * MR
                for k in range(q1 - q0):
                    if t == 0:  # a constant trip count: unrolled
                        for i in range(_MR[0]):
                            s[q0 + k, i] = src[k, o + i]
                    else:
                        for i in range(_MR[1]):
                            s[q0 + k, i] = src[k, o + i]
            for k in range(q1 - q0):
                for i in range(M - full * MR):
                    strip[full, q0 + k, i] = src[k, full * MR + i]
        return
    for r in range(0, M, MR):
        m, s = min(MR, M - r), strip[r // MR]
        for k in range(kc):
            if m == MR and t == 0:  # a constant trip count: unrolled
                for i in range(_MR[0]):
                    s[k, i] = ak[r + i, k]
            elif m == MR:
                for i in range(_MR[1]):
                    s[k, i] = ak[r + i, k]
            else:
                for i in range(m):
                    s[k, i] = ak[r + i, k]


@njit(**_OPTS)
def _rows(a, P, pcol, pw, c, r0, r1, add, copy_a, t, kc, at):
    """Rows ``r0:r1`` of ``c (+)= a @ B`` over every panel, in blocks of ``kc`` ``k`` and,
    inside each, in blocks of :data:`MC` rows: for each block, every panel, then the block's row
    tiles. A panel's block of ``k`` (``kc x NR``) is read by the block's tiles one after another
    (from L1 with ``kc =`` :data:`KC`), and the block's rows of ``a`` (``MC x kc``) stay in L2
    while every panel passes (the loop order of BLIS's macro-kernel). The whole-sequence products
    have ``T B`` rows of ``a`` (or as many columns of ``B``): :func:`gemm`'s order (all rows per
    panel) would read all of ``a``'s block again for each panel, and one tile at a time (all
    panels per tile) reads every panel again from L3 when they do not fit L2 (``x W^T`` at config C: 4 MB of panels).
    The per-step products, with a few rows of ``a``, keep :func:`gemm`'s order. Each element is
    summed the same way in any order: same bits. ``copy_a``: each block of ``k`` of ``a``'s rows
    (all of this call's rows, so that ``a = dA^T`` is read in runs of whole rows of ``dA``) is
    copied, tile by tile and k-major, to a unit-stride buffer first (same bits): with ``a =
    dA^T``, whose rows are ``G H`` floats apart, the tiles' reads along ``k`` fall into a few cache
    sets (:func:`_strips`).
    Forced AVX2 on the Zen 4 development machine, ``dA^T h`` at config C ran at 50 GFLOP/s in
    place and 96 copied with ``h`` packed (OpenBLAS's Haswell kernel: 107); with the AVX-512 tiles
    the copy cost 7-10 % at configs A and B there (:func:`candidates` times it per shape). ``at``:
    ``a``'s transpose as a C-ordered array (``dA`` itself), or an empty one: the copy then reads
    each tile's rows of ``a`` as one run of ``at``'s row, which compiles to vector loads, instead
    of element by element through ``a``'s strides, which numba does not know at compile time."""
    a, c = a[r0:r1], c[r0:r1]
    M, K = a.shape[0], P.shape[-2]
    MR = _MR[t]
    strip = np.empty((-(-M // MR) if copy_a else 0, kc, MR), a.dtype)  # (tile, k, row): a's block of k, k-major
    for k0 in range(0, max(K, 1), kc):
        k1 = min(K, k0 + kc)
        ak = a[:, k0:k1]
        if copy_a:
            _strips(ak, at, strip, r0, k0, t)
        for b0 in range(0, M, MC * MR):
            b1 = min(M, b0 + MC * MR)
            for p in range(pcol.shape[0]):
                col, w = pcol[p], pw[p]
                panel = _panel(P, p, col, w, k0, k1)
                for r in range(b0, b1, MR):
                    m = min(MR, b1 - r)
                    if copy_a:  # (MR, k1 - k0), unit stride along the rows
                        _tile(t, strip[r // MR, : k1 - k0].T, panel, c[r:, col:], m, w, add or k0 > 0)
                    else:
                        _tile(t, ak[r:], panel, c[r:, col:], m, w, add or k0 > 0)


LAYOUTS = {f"{mr}x{nv} tiles": t for t, (nv, mr) in enumerate(TILES)}
"""The layouts the planner times (:func:`rnnlab.lm.plan.layout`): the register tile (rows x
vectors) of the per-step products, :data:`TILE`, whose weights the loops over time pack once. The
whole products pack (or read) ``b`` at each call, so their tile is part of their schedule, timed
per shape (:func:`schedule`)."""


def layout() -> str:
    """The name of the layout in force."""
    return next(k for k, v in LAYOUTS.items() if v == TILE)


def set_layout(name: str) -> None:
    """Put the layout ``name`` (a key of :data:`LAYOUTS`) in force for this process's per-step
    products (each packed loop over time takes the layout in force when it starts; the whole
    products choose their tile per shape, :func:`schedule`). Every layout gives the same bits:
    only the speed changes."""
    global TILE
    TILE = LAYOUTS[name]


@functools.lru_cache(maxsize=256)
def _whole(N: int, nr: int) -> tuple[np.ndarray, np.ndarray]:
    return panels([(0, N)], nr)


def in_place(b: np.ndarray) -> bool:
    """Whether :func:`matmul`'s tiles can read ``b (K, N)`` where it is: C-ordered, its columns
    filling whole vectors."""
    return b.flags.c_contiguous and b.shape[1] % lanes(b.dtype) == 0


def operand(b: np.ndarray, where: bool, tile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(P, pcol, pw)``: what the tiles of :func:`matmul` (tile ``TILES[tile]``) read for ``@ b``: ``b`` itself where ``where`` (and :func:`in_place`), else its panels
    packed into a workspace array. Read in place,
    the 64-byte panels of AVX2, each row kilobytes from the next, fall into a few cache sets:
    ``dA W`` at config C (forced AVX2 on the Zen 4 development machine, one thread) ran at 69
    GFLOP/s in place and 98 packed; with AVX-512's 256-byte panels the Zen 4 preferred ``b`` in
    place, an Intel Ice Lake packed."""
    K, N = b.shape
    nr = panel_width(b.dtype, tile)
    pcol, pw = _whole(N, nr)
    if where and in_place(b):
        return b, pcol, pw
    P = workspace.empty((len(pcol), K, nr), b.dtype)
    if b.T.flags.c_contiguous and not b.flags.c_contiguous:
        pack(b.T, True, pcol, pw, P, 0, len(pcol))
    else:
        pack(np.ascontiguousarray(b), False, pcol, pw, P, 0, len(pcol))
    return P, pcol, pw


@njit(**_OPTS)
def _panels(a, P, pcol, pw, c, r0, r1, add, copy_a, t, kc, at):
    """Rows ``r0:r1`` of ``c (+)= a @ B`` in :func:`gemm`'s order (for each block of ``k``, each
    panel, then every row tile): the arguments of :func:`_rows` (``copy_a`` and ``at`` unused),
    the same bits."""
    gemm(a[r0:r1], P, pcol, pw, c[r0:r1], 0, pcol.shape[0], t, add, kc)


SCHEDULES = {"rows": _rows, "panels": _panels}
"""The loop orders of a whole product (the same bits in either): blocks of rows, each over every
panel (:func:`_rows`), or every row per panel (:func:`_panels`)."""

SCHEDULE = None
"""``(tile, b in place, order, kc, copy a)`` for every whole product (benchmarks and tests), or None:
each shape's fastest, timed on its first products (:func:`schedule`)."""

TUNE_ROUNDS = 3
"""A shape's first product runs every candidate once, then those within :data:`TUNE_CLOSE` of the
fastest again, interleaved, until each of those ran this many times; the one with the best time
is kept for the process."""

TUNE_CLOSE = 1.2
"""The candidates slower than the fastest by more than this factor after the first round are not
run again, which more than halves the timing's cost: on an Intel Ice Lake, with the candidates of
one tile, the first training step of the trainer's default model (``packed@1``, one thread) took
1.4 s so and 3.2 s with three full rounds, against 0.19 s for the steps after; at LSTM config C
with two layers 9.3 and 14.6 s against 1.27. With both tiles' candidates: 2.7 s against 0.21, and
14.8 s against 1.6. The planner remembers the choices per machine
(:func:`rnnlab.lm.plan.save_schedules`), so that cost falls on a machine's first run of a shape."""

_CHOSEN: dict = {}


def candidates(transposed: bool, b_in_place: bool) -> list[tuple[int, bool, str, int, bool]]:
    """The schedules ``(tile, b in place, order, kc, copy a)`` timed for a whole product: either
    register tile (:data:`TILES`), ``b`` read in place (where :func:`in_place`) or packed (the
    packing timed with the product), either loop order, blocks of :data:`KC` or :data:`KC_ROWS`
    along ``k``, and for a transposed ``a`` in row blocks its strips copied or read in place. Which
    wins depends on the shape, not only on the CPU: on an Intel Ice Lake, LSTM's ``dA^T h`` ran
    fastest in :func:`gemm`'s order, ``dA`` uncopied, at config A (where two panels share each
    copied strip), and in row blocks with its strips copied at B and C; the products of ``H = 128``
    columns ran faster with the 64-column panels of the 6 x 4 tile, which the 8 x 3 tile's 48 cut
    unevenly, while that tile ran the per-step products faster (``python
    benchmarks/whole_gemms.py --schedules``)."""
    return [(tile, where, order, kc, copy)
            for tile in range(len(TILES))
            for where in ((True, False) if b_in_place else (False,))
            for order in SCHEDULES for kc in (KC, KC_ROWS)
            for copy in ((False, True) if transposed and order == "rows" else (False,))]


def schedule(k) -> tuple[int, bool, str, int, bool] | None:
    """The schedule in force for the products of :func:`key` ``k``: :data:`SCHEDULE`, the one timed
    for them in this process, or None before the first."""
    return SCHEDULE or _CHOSEN.get(k)


def chosen() -> dict:
    """The schedules timed in this process (or taken by :func:`remember`), by :func:`key`."""
    return dict(_CHOSEN)


def remember(entries: dict) -> int:
    """Take schedules timed before, ``{key: schedule}`` (:func:`key`, :func:`candidates`; e.g.
    remembered on disk for this machine by :func:`rnnlab.lm.plan.save_schedules`), for the keys
    not yet timed in this process, so their first products skip the timing. Entries of another
    form (an older version's) are skipped. Returns how many were taken."""
    taken = 0
    for k, sched in entries.items():
        if valid(k, sched) and k not in _CHOSEN:
            _CHOSEN[k] = sched
            taken += 1
    return taken


def valid(k, sched) -> bool:
    """Whether ``k`` has the form of a :func:`key` and ``sched`` is one of its :func:`candidates`."""
    return (isinstance(k, tuple) and len(k) == 7 and all(isinstance(x, bool) for x in k[3:5])
            and isinstance(k[5], str) and all(type(x) is int for x in (*k[:3], k[6]))
            and isinstance(sched, tuple) and sched in candidates(k[3], k[4]))


def _members(M: int, team: int) -> int:
    """The members of a team of ``team`` that split ``M`` rows: at least a few row tiles each
    (of the taller tile, so the count does not depend on the tile)."""
    return max(1, min(team, -(-M // max(_MR)) // 4))


def key(a: np.ndarray, b: np.ndarray, team: int = 1) -> tuple:
    """What a product's schedule is timed and remembered by: ``(M, K, N, a transposed, b in place
    possible, dtype, members)``, with ``M`` and ``K`` rounded up to a power of two. One of
    them is the ``T B`` rows of a sequence, which varies from batch to batch where sequences do,
    and a schedule's speed depends on the blocks of rows and of ``k`` it fills, not on their exact
    count; ``N`` (the panels) is kept exact."""
    M, K = a.shape
    return (1 << max(M - 1, 0).bit_length(), 1 << max(K - 1, 0).bit_length(), b.shape[1],
            a.strides[1] != a.itemsize, in_place(b), a.dtype.str, _members(M, team))


def _tune(k, run, out, add):
    """Run the candidate schedules as :data:`TUNE_ROUNDS` says, interleaved (``out`` restored before
    each when adding), and keep the fastest for :func:`key` ``k``: ``out`` ends with the product, as
    one run leaves it."""
    cands = candidates(k[3], k[4])
    base = out.copy() if add else None
    best = {c: float("inf") for c in cands}
    for r in range(TUNE_ROUNDS):
        if r:
            cands = [c for c in cands if best[c] <= TUNE_CLOSE * min(best.values())]
        for c in cands:
            if add:
                out[...] = base
            t0 = time.perf_counter()
            run(c)
            best[c] = min(best[c], time.perf_counter() - t0)
    _CHOSEN[k] = min(best, key=best.get)


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray, add: bool = False, team: int = 1) -> np.ndarray:
    """``out = a @ b`` (``add``: ``out += a @ b``, each element's sum starting from its value in
    ``out``) by the packed kernel, the rows of ``a`` split over a team of ``team`` threads. ``a (M, K)`` any
    strides, ``b (K, N)`` C-ordered or the transpose of a C-ordered array, ``out (M, N)`` with
    unit column stride; one float dtype. Each element gets the same bits whatever ``team``. The
    register tile, whether ``b`` is read in place or packed, the loop order, the block of ``k`` and
    whether the strips of a transposed ``a`` are copied (:func:`candidates`; the same bits every
    way) are timed on the first product of each shape (:func:`key`) and the fastest kept
    (:func:`schedule`)."""
    M, K = a.shape
    N = b.shape[1]
    if b.shape[0] != K or out.shape != (M, N) or not a.dtype == b.dtype == out.dtype:
        raise ValueError(f"packed.matmul: {a.shape} @ {b.shape} -> {out.shape} ({a.dtype}, {b.dtype}, {out.dtype})")
    n = _members(M, team)
    sync = spin.new_sync(n)
    at = a.T if a.T.flags.c_contiguous else np.empty((0, 0), a.dtype)  # (K, M) for a = dA^T

    def run(sched):
        tile, where, order, kc, copy_a = sched
        MR = _MR[tile]
        blocks = -(-M // MR)
        cut = [min(M, round(blocks * j / n) * MR) for j in range(n + 1)]  # whole row tiles per member
        P, pcol, pw = operand(b, where, tile)
        team_mod.run(SCHEDULES[order], [(a, P, pcol, pw, out, cut[j], cut[j + 1], add, copy_a, tile, kc, at)
                                        for j in range(n)], sync)

    k = key(a, b, team)
    sched = schedule(k)
    if sched is None:
        _tune(k, run, out, add)
    else:
        run(sched)
    return out
