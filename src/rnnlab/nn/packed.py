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
Each ``c`` element is ``fma(a[r, K-1], b[K-1], ... fma(a[r, 0], b[0], 0))``, summed in ``k``
order whatever the panel, row block or thread that computes it, so results do not depend on how
the columns or rows are split (they do differ from a BLAS in the last bits). Tile shapes
(:data:`TILE`) by the vector ISA numba compiles for: AVX-512 (32 registers of 64 bytes), AVX/AVX2
(16 of 32 bytes), else SSE (16 of 16 bytes).

Shapes: ``a (M, K)`` rows with unit column stride; ``W (N, K)`` (``transpose``) or ``(K, N)``;
``P (panels, K, NR)``; ``c (M, N)`` rows with unit column stride. float32 or float64.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils, config
from numba.extending import intrinsic

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
TILE = {64: (4, 6), 32: (2, 6), 16: (2, 6)}[VECTOR_BYTES]
"""``(NV, MR)``: vectors per row and rows of one register tile (accumulators ``NV * MR``)."""


def lanes(dtype) -> int:
    """Lanes ``VW`` per vector for ``dtype``."""
    return VECTOR_BYTES // np.dtype(dtype).itemsize


def panel_width(dtype) -> int:
    """``NR``: the columns of one packed panel."""
    return lanes(dtype) * TILE[0]


# ------------------------------------------------------------------------------ micro-kernel
@intrinsic
def _tile(typingctx, a, panel, c, m, nv):
    """``c[:m, :nv] = a[:m] @ panel[:, :nv]`` for ``1 <= m <= MR``, ``1 <= nv <= NR``: ``a`` and
    ``c`` are 2-D views starting at the tile's first row (and column), ``panel (K, NR)``."""
    if not all(isinstance(x, types.Array) and x.ndim == 2 for x in (a, panel, c)):
        return None
    if not a.dtype == panel.dtype == c.dtype or a.dtype not in (types.float32, types.float64):
        return None
    if panel.layout != "C":
        return None
    NV, MR = TILE
    VW = VECTOR_BYTES // (a.dtype.bitwidth // 8)
    NR = VW * NV
    sig = types.void(a, panel, c, m, nv)

    def codegen(context, builder, signature, args):
        i32, i64 = ir.IntType(32), ir.IntType(64)
        fl = context.get_value_type(a.dtype)
        vt = ir.VectorType(fl, VW)
        size = a.dtype.bitwidth // 8
        A = context.make_array(a)(context, builder, args[0])
        P = context.make_array(panel)(context, builder, args[1])
        C = context.make_array(c)(context, builder, args[2])
        mv = context.cast(builder, args[3], signature.args[3], types.int64)
        nvv = context.cast(builder, args[4], signature.args[4], types.int64)
        K = cgutils.unpack_tuple(builder, P.shape, 2)[0]
        lda = builder.sdiv(cgutils.unpack_tuple(builder, A.strides, 2)[0], i64(size))
        ldc = builder.sdiv(cgutils.unpack_tuple(builder, C.strides, 2)[0], i64(size))
        fn = builder.function
        mod = builder.module
        mstore = cgutils.get_or_insert_function(
            mod, ir.FunctionType(ir.VoidType(), [vt, vt.as_pointer(), i32, ir.VectorType(ir.IntType(1), VW)]),
            f"llvm.masked.store.v{VW}f{a.dtype.bitwidth}.p0")
        vfma = cgutils.get_or_insert_function(mod, ir.FunctionType(vt, [vt, vt, vt]),
                                              f"llvm.fma.v{VW}f{a.dtype.bitwidth}")
        zero = ir.Constant(vt, [0.0] * VW)
        splat0 = ir.Constant(ir.VectorType(i32, VW), [0] * VW)
        lane_ids = ir.Constant(ir.VectorType(i64, VW), list(range(VW)))

        def bcast(x, ty):
            return builder.shuffle_vector(builder.insert_element(ir.Constant(ty, ir.Undefined), x, i32(0)),
                                          ir.Constant(ty, ir.Undefined), splat0)

        end = fn.append_basic_block("tile.end")
        switch = builder.switch(mv, end)
        for mm in range(1, MR + 1):
            head = fn.append_basic_block(f"tile.m{mm}")
            switch.add_case(i64(mm), head)
            builder.position_at_end(head)
            loop = fn.append_basic_block(f"tile.m{mm}.loop")
            done = fn.append_basic_block(f"tile.m{mm}.done")
            builder.cbranch(builder.icmp_signed(">", K, i64(0)), loop, done)
            builder.position_at_end(loop)
            k = builder.phi(i64)
            k.add_incoming(i64(0), head)
            acc = [[builder.phi(vt) for _ in range(NV)] for _ in range(mm)]
            for row in acc:
                for x in row:
                    x.add_incoming(zero, head)
            base = builder.mul(k, i64(NR))
            bv = [builder.load(builder.bitcast(builder.gep(P.data, [builder.add(base, i64(v * VW))]), vt.as_pointer()),
                               align=size) for v in range(NV)]
            new = []
            for r in range(mm):
                s = builder.load(builder.gep(A.data, [builder.add(builder.mul(i64(r), lda), k)]))
                ab = bcast(s, vt)
                new.append([builder.call(vfma, [ab, bv[v], acc[r][v]]) for v in range(NV)])
            k1 = builder.add(k, i64(1))
            k.add_incoming(k1, loop)
            for r in range(mm):
                for v in range(NV):
                    acc[r][v].add_incoming(new[r][v], loop)
            builder.cbranch(builder.icmp_signed("<", k1, K), loop, done)
            builder.position_at_end(done)
            res = []
            for r in range(mm):
                row = []
                for v in range(NV):
                    x = builder.phi(vt)
                    x.add_incoming(zero, head)
                    x.add_incoming(new[r][v], loop)
                    row.append(x)
                res.append(row)
            for r in range(mm):
                rowp = builder.gep(C.data, [builder.mul(i64(r), ldc)])
                for v in range(NV):
                    ptr = builder.bitcast(builder.gep(rowp, [i64(v * VW)]), vt.as_pointer())
                    left = bcast(builder.sub(nvv, i64(v * VW)), ir.VectorType(i64, VW))
                    mask = builder.icmp_signed("<", lane_ids, left)
                    builder.call(mstore, [res[r][v], ptr, i32(size), mask])
            builder.branch(end)
        builder.position_at_end(end)
        return context.get_dummy_value()

    return sig, codegen


# ------------------------------------------------------------------------------ GEMM and packing
@njit(**_OPTS)
def gemm(a, P, pcol, pw, c, p0, p1):
    """``c[:, pcol[p] : pcol[p] + pw[p]] = a @ panel p`` for the panels ``p0 <= p < p1``."""
    M = a.shape[0]
    MR = TILE[1]
    for p in range(p0, p1):
        col, w, panel = pcol[p], pw[p], P[p]
        for r in range(0, M, MR):
            _tile(a[r:], panel, c[r:, col:], min(MR, M - r), w)


@njit(**_OPTS)
def pack(W, transpose, pcol, pw, P, p0, p1):
    """Fill panels ``p0 <= p < p1`` of ``P (panels, K, NR)``: ``P[p, k, l] = B[k, pcol[p] + l]``
    for ``l < pw[p]``, zero beyond, with ``B = W^T`` (``transpose``) or ``W``."""
    NR = P.shape[2]
    K = P.shape[1]
    for p in range(p0, p1):
        col, w = pcol[p], pw[p]
        for k in range(K):
            dst = P[p, k]
            if transpose:
                for l in range(w):
                    dst[l] = W[col + l, k]
            else:
                src = W[k]
                for l in range(w):
                    dst[l] = src[col + l]
            for l in range(w, NR):
                dst[l] = 0


def panels(segments, nr: int) -> tuple[np.ndarray, np.ndarray]:
    """``(pcol, pw)`` int64: each column segment ``(lo, hi)`` cut into panels of at most ``nr``
    columns, in order."""
    cols, widths = [], []
    for lo, hi in segments:
        for c in range(lo, hi, nr):
            cols.append(c)
            widths.append(min(nr, hi - c))
    return np.asarray(cols, np.int64), np.asarray(widths, np.int64)
