"""Numba-compiled fused kernels: the same step kernels as :class:`rnnlab.nn.cells.UfuncKernels`,
each one pass over its rows instead of a dozen NumPy ufunc calls with temporaries.

Never imported at ``import rnnlab``: :func:`rnnlab.nn.cells.kernels_for` imports this module the
first time a NumPy float32/float64 array needs a kernel (and numba is installed, and
``RNNLAB_NO_NUMBA`` is unset). Every kernel is compiled with ``cache=True``, so the compile
cost (a few seconds, once per machine and dtype) is paid by the first run only; later processes
load the machine code from numba's cache.

Conventions shared with ``cells.py`` (the math is written out there):

- the same signatures and in-place semantics as the ufunc kernels, argument for argument;
- every array argument is 2-D ``(B, ...)`` except biases ``(G*H,)``/``(H,)`` and the row mask
  ``m (B,)``; optional arguments (``b``, ``m``, ``dy``, ``b_hn``) may be ``None``, and numba
  compiles the ``None`` case without the branch;
- float32 and float64: constants are float32 values that are exact in either type, so float32
  arrays stay float32 end to end and float64 arrays promote them exactly;
- ``tanh`` is a vectorisable rational approximation for float32 (|error| < 3e-7, the one Eigen
  and XLA use) and ``math.tanh`` for float64 (which the float64 gradient checks need exact);
- rows are processed one at a time with one 1-D view per gate, which is what lets LLVM vectorise
  the inner loop (it cannot prove that ``a[j]`` and ``a[H + j]`` do not overlap), and in the LSTM
  and GRU forward kernels and the LSTM backward kernel each loop writes one array (measured twice
  as fast as one loop over all the arrays, see :func:`lstm_forward_units`);
- fast-math flags without ``nnan``/``ninf``: a NaN in the input stays a NaN in the output, so a
  diverging run is still caught by the trainer's finite-loss check;
- the step kernels also go without ``reassoc``: each element's expression is then evaluated the
  same way in the vectorised body and in the scalar remainder of a loop, so a kernel run on the
  hidden units ``j0:j1`` (the ``*_units`` kernels, used by a team of threads that splits a step,
  :mod:`rnnlab.nn.team`) gives the bits of the whole-row kernel wherever the cut falls.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import overload, register_jitable

_STEP_FASTMATH = {"nsz", "arcp", "contract", "afn"}
_FASTMATH = _STEP_FASTMATH | {"reassoc"}  # reductions (softmax_xent) may be reordered to vectorise
_STEP_OPTS = dict(cache=True, nogil=True, fastmath=_STEP_FASTMATH, error_model="numpy")
_OPTS = dict(cache=True, nogil=True, fastmath=_FASTMATH, error_model="numpy")

ZERO = np.float32(0.0)
HALF = np.float32(0.5)
ONE = np.float32(1.0)


# ------------------------------------------------------------------------------ scalar helpers
@register_jitable(fastmath=_STEP_FASTMATH, error_model="numpy")
def _tanh_f32(x):
    """Rational minimax approximation of tanh on [-7.905, 7.905] (Eigen's ``ptanh_float``)."""
    c = np.float32(7.90531110763549805)
    x = c if x > c else x
    x = -c if x < -c else x
    x2 = x * x
    p = np.float32(-2.76076847742355e-16)
    p = p * x2 + np.float32(2.00018790482477e-13)
    p = p * x2 + np.float32(-8.60467152213735e-11)
    p = p * x2 + np.float32(5.12229709037114e-08)
    p = p * x2 + np.float32(1.48572235717979e-05)
    p = p * x2 + np.float32(6.37261928875436e-04)
    p = p * x2 + np.float32(4.89352455891786e-03)
    p = p * x
    q = np.float32(1.19825839466702e-06)
    q = q * x2 + np.float32(1.18534705686654e-04)
    q = q * x2 + np.float32(2.26843463243900e-03)
    q = q * x2 + np.float32(4.89352518554385e-03)
    return p / q


def _by_float_width(f32, other, doc):
    """A scalar function that numba compiles as ``f32`` for float32 arguments and as ``other``
    for every other type (the choice is made at compile time, per signature)."""
    def fn(x):
        return other(x)

    fn.__doc__ = doc

    @overload(fn)
    def _choose(x):
        if isinstance(x, types.Float) and x.bitwidth == 32:
            return lambda x: f32(x)
        return lambda x: other(x)

    return fn


tanh = _by_float_width(_tanh_f32, math.tanh, "``tanh`` of one float (see the module docstring).")


@register_jitable
def sigmoid(x):
    return HALF * tanh(HALF * x) + HALF


# ------------------------------------------------------------------------------ vanilla RNN
@njit(**_STEP_OPTS)
def rnn_forward(a, hh, b, relu, h_out):
    """``h_out = act(a + hh + b)``; ``a`` may be ``h_out`` itself; ``hh`` is used as scratch."""
    rnn_forward_units(a, hh, b, relu, h_out, 0, h_out.shape[1])


@njit(**_STEP_OPTS)
def rnn_forward_units(a, hh, b, relu, h_out, j0, j1):
    """:func:`rnn_forward` for the hidden units ``j0 <= j < j1`` (columns ``j0:j1``) only.

    Two passes per row, so that no loop reads and writes two different arrays that may be the
    same memory (LLVM's runtime overlap check would fail and fall back to scalar code)."""
    B = h_out.shape[0]
    n = j1 - j0
    for r in range(B):
        ar, hr, o = a[r, j0:j1], hh[r, j0:j1], h_out[r, j0:j1]
        for j in range(n):
            v = ar[j] + hr[j]
            if b is not None:
                v = v + b[j0 + j]
            hr[j] = v
        if relu:
            for j in range(n):
                v = hr[j]
                o[j] = ZERO if v < ZERO else v
        else:
            for j in range(n):
                o[j] = tanh(hr[j])


@njit(**_STEP_OPTS)
def rnn_backward(dy, dnext, m, h, relu, dh_out, da_out):
    """``dh_out = dy m + dnext``; ``da_out = dh_out act'(h) m``."""
    rnn_backward_units(dy, dnext, m, h, relu, dh_out, da_out, 0, h.shape[1])


@njit(**_STEP_OPTS)
def rnn_backward_units(dy, dnext, m, h, relu, dh_out, da_out, j0, j1):
    """:func:`rnn_backward` for the hidden units ``j0 <= j < j1`` only."""
    B = h.shape[0]
    n = j1 - j0
    for r in range(B):
        mr = ONE if m is None else m[r]
        dn, hr, dho, dao = dnext[r, j0:j1], h[r, j0:j1], dh_out[r, j0:j1], da_out[r, j0:j1]
        for j in range(n):
            dh = dn[j]
            if dy is not None:
                dh = dy[r, j0 + j] * mr + dh
            dho[j] = dh
            if relu:
                dao[j] = dh * mr if hr[j] > ZERO else ZERO
            else:
                dao[j] = dh * (ONE - hr[j] * hr[j]) * mr


# ------------------------------------------------------------------------------ LSTM
@njit(**_STEP_OPTS)
def lstm_forward(a, hh, b, c_prev, c_out, tc_out, h_out):
    """Gates ``i, f, g, o`` of ``a + hh + b`` written over ``a``; ``c_t``, ``tanh(c_t)``, ``h_t``."""
    lstm_forward_units(a, hh, b, c_prev, c_out, tc_out, h_out, 0, c_prev.shape[1])


@njit(**_STEP_OPTS)
def lstm_forward_units(a, hh, b, c_prev, c_out, tc_out, h_out, j0, j1):
    """:func:`lstm_forward` for the hidden units ``j0 <= j < j1`` only: gate columns
    ``g H + j`` of ``a``, ``hh`` and ``b``, columns ``j`` of the states.

    One loop per gate and one per state array, each touching at most five arrays. One loop over
    all eleven arrays took twice as long (at ``B = 32, H = 128``, a third of the time of the
    step's GEMM; ``benchmarks/step_kernels.py``): LLVM guards its vector form of such a loop by
    run-time overlap checks of every written array against every other and keeps all four gates'
    polynomials live at once; which of these cost the time was not established. Each element goes
    through the same operations in the same order as in the one-loop form, so the results are
    the same bits."""
    B, H = c_prev.shape
    n = j1 - j0
    for r in range(B):
        ai, af = a[r, j0:j1], a[r, H + j0 : H + j1]
        ag, ao = a[r, 2 * H + j0 : 2 * H + j1], a[r, 3 * H + j0 : 3 * H + j1]
        _sigmoid_gate(ai, hh[r, j0:j1], b, j0)
        _sigmoid_gate(af, hh[r, H + j0 : H + j1], b, H + j0)
        _tanh_gate(ag, hh[r, 2 * H + j0 : 2 * H + j1], b, 2 * H + j0)
        _sigmoid_gate(ao, hh[r, 3 * H + j0 : 3 * H + j1], b, 3 * H + j0)
        cp, co, tco, hout = c_prev[r, j0:j1], c_out[r, j0:j1], tc_out[r, j0:j1], h_out[r, j0:j1]
        for j in range(n):  # c = f c_prev + i g as the one-loop form computed it, bit for bit
            co[j] = ai[j] * ag[j]
        for j in range(n):
            co[j] = af[j] * cp[j] + co[j]
        for j in range(n):
            tco[j] = tanh(co[j])
        for j in range(n):
            hout[j] = ao[j] * tco[j]


@register_jitable(fastmath=_STEP_FASTMATH, error_model="numpy")
def _sigmoid_gate(x, hh, b, off):
    """``x = sigmoid(x + hh + b[off:])`` in place (without ``b`` when it is None)."""
    if b is None:
        for j in range(x.shape[0]):
            x[j] = sigmoid(x[j] + hh[j])
    else:
        bs = b[off : off + x.shape[0]]
        for j in range(x.shape[0]):
            x[j] = sigmoid(x[j] + hh[j] + bs[j])


@register_jitable(fastmath=_STEP_FASTMATH, error_model="numpy")
def _tanh_gate(x, hh, b, off):
    """``x = tanh(x + hh + b[off:])`` in place (without ``b`` when it is None)."""
    if b is None:
        for j in range(x.shape[0]):
            x[j] = tanh(x[j] + hh[j])
    else:
        bs = b[off : off + x.shape[0]]
        for j in range(x.shape[0]):
            x[j] = tanh(x[j] + hh[j] + bs[j])


@njit(**_STEP_OPTS)
def lstm_backward(dy, dnext, m, dc, gates, c_prev, tc, dh_out, da_out):
    """``dh_out = dy m + dnext``; pre-activation gradient into ``da_out``; ``dc`` (the gradient
    reaching ``c_t`` from step t+1) becomes ``dL/dc_{t-1}`` in place (unchanged where ``m`` is 0)."""
    lstm_backward_units(dy, dnext, m, dc, gates, c_prev, tc, dh_out, da_out, 0, dc.shape[1])


@njit(**_STEP_OPTS)
def lstm_backward_units(dy, dnext, m, dc, gates, c_prev, tc, dh_out, da_out, j0, j1):
    """:func:`lstm_backward` for the hidden units ``j0 <= j < j1`` only."""
    B, H = dc.shape
    n = j1 - j0
    for r in range(B):
        mr = ONE if m is None else m[r]
        gi, gf = gates[r, j0:j1], gates[r, H + j0 : H + j1]
        gg, go = gates[r, 2 * H + j0 : 2 * H + j1], gates[r, 3 * H + j0 : 3 * H + j1]
        di, df = da_out[r, j0:j1], da_out[r, H + j0 : H + j1]
        dg, do = da_out[r, 2 * H + j0 : 2 * H + j1], da_out[r, 3 * H + j0 : 3 * H + j1]
        dn, dcr, cp, tcr, dho = dnext[r, j0:j1], dc[r, j0:j1], c_prev[r, j0:j1], tc[r, j0:j1], dh_out[r, j0:j1]
        if mr == ZERO:  # padding: dh passes through, nothing flows into the gates or the cell
            for j in range(n):
                dho[j] = dn[j] if dy is None else dy[r, j0 + j] * mr + dn[j]
                di[j] = ZERO
                df[j] = ZERO
                dg[j] = ZERO
                do[j] = ZERO
            continue
        # one loop per output array (see lstm_forward_units); dcr holds dL/dc_t in between
        if dy is None:
            for j in range(n):
                dho[j] = dn[j]
        else:
            dyr = dy[r, j0:j1]
            for j in range(n):
                dho[j] = dyr[j] * mr + dn[j]
        for j in range(n):
            do[j] = dho[j] * mr * tcr[j] * (go[j] * (ONE - go[j]))
        for j in range(n):
            dcr[j] = dcr[j] + dho[j] * mr * go[j] * (ONE - tcr[j] * tcr[j])
        for j in range(n):
            di[j] = dcr[j] * gg[j] * (gi[j] * (ONE - gi[j]))
        for j in range(n):
            df[j] = dcr[j] * cp[j] * (gf[j] * (ONE - gf[j]))
        for j in range(n):
            dg[j] = dcr[j] * gi[j] * (ONE - gg[j] * gg[j])
        for j in range(n):
            dcr[j] = dcr[j] * gf[j]


# ------------------------------------------------------------------------------ GRU
@njit(**_STEP_OPTS)
def gru_forward(ax, hh, b, b_hn, h_prev, hn_out, h_out):
    """Gates ``r, z, n`` written over ``ax``; ``hh_n + b_hn`` into ``hn_out``; ``h_t`` into ``h_out``."""
    gru_forward_units(ax, hh, b, b_hn, h_prev, hn_out, h_out, 0, h_prev.shape[1])


@njit(**_STEP_OPTS)
def gru_forward_units(ax, hh, b, b_hn, h_prev, hn_out, h_out, j0, j1):
    """:func:`gru_forward` for the hidden units ``j0 <= j < j1`` only."""
    B, H = h_prev.shape
    n = j1 - j0
    for r in range(B):
        xr, xz, xn = ax[r, j0:j1], ax[r, H + j0 : H + j1], ax[r, 2 * H + j0 : 2 * H + j1]
        hp, hno, ho = h_prev[r, j0:j1], hn_out[r, j0:j1], h_out[r, j0:j1]
        # one loop per output array, so that each is vectorised (see lstm_forward_units)
        _sigmoid_gate_xb(xr, hh[r, j0:j1], b, j0)
        _sigmoid_gate_xb(xz, hh[r, H + j0 : H + j1], b, H + j0)
        hn = hh[r, 2 * H + j0 : 2 * H + j1]
        if b_hn is None:
            for j in range(n):
                hno[j] = hn[j]
        else:
            bhn = b_hn[j0:j1]
            for j in range(n):
                hno[j] = hn[j] + bhn[j]
        if b is None:
            for j in range(n):
                xn[j] = tanh(xn[j] + xr[j] * hno[j])
        else:
            bn = b[2 * H + j0 : 2 * H + j1]
            for j in range(n):
                xn[j] = tanh(xn[j] + bn[j] + xr[j] * hno[j])
        for j in range(n):
            ho[j] = xn[j] + xz[j] * (hp[j] - xn[j])


@register_jitable(fastmath=_STEP_FASTMATH, error_model="numpy")
def _sigmoid_gate_xb(x, hh, b, off):
    """``x = sigmoid(x + b[off:] + hh)`` in place, summed in that order (without ``b`` when it is None)."""
    if b is None:
        for j in range(x.shape[0]):
            x[j] = sigmoid(x[j] + hh[j])
    else:
        bs = b[off : off + x.shape[0]]
        for j in range(x.shape[0]):
            x[j] = sigmoid(x[j] + bs[j] + hh[j])


@njit(**_STEP_OPTS)
def gru_backward(dy, dnext, direct, m, gates, hn, h_prev, dh_out, dhh_out, dan_out):
    """``dh_out = dy m + dnext + direct``; ``dhh_out = [dar, daz, dhh_n]``, ``dan_out``; ``direct``
    becomes ``dh m z``, the part of ``dh_{t-1}`` that bypasses ``W_hh``."""
    gru_backward_units(dy, dnext, direct, m, gates, hn, h_prev, dh_out, dhh_out, dan_out, 0, h_prev.shape[1])


@njit(**_STEP_OPTS)
def gru_backward_units(dy, dnext, direct, m, gates, hn, h_prev, dh_out, dhh_out, dan_out, j0, j1):
    """:func:`gru_backward` for the hidden units ``j0 <= j < j1`` only."""
    B, H = h_prev.shape
    n = j1 - j0
    for r in range(B):
        mr = ONE if m is None else m[r]
        gr, gz, gn = gates[r, j0:j1], gates[r, H + j0 : H + j1], gates[r, 2 * H + j0 : 2 * H + j1]
        dar, daz, dhn = dhh_out[r, j0:j1], dhh_out[r, H + j0 : H + j1], dhh_out[r, 2 * H + j0 : 2 * H + j1]
        dn, dr, hnr, hp = dnext[r, j0:j1], direct[r, j0:j1], hn[r, j0:j1], h_prev[r, j0:j1]
        dho, dan = dh_out[r, j0:j1], dan_out[r, j0:j1]
        for j in range(n):
            dh = dn[j] + dr[j]
            if dy is not None:
                dh = dy[r, j0 + j] * mr + dh
            dho[j] = dh
            dh = dh * mr
            rg, z, nn = gr[j], gz[j], gn[j]
            a_n = dh * (ONE - z) * (ONE - nn * nn)
            dan[j] = a_n
            daz[j] = dh * (hp[j] - nn) * (z * (ONE - z))
            dar[j] = a_n * hnr[j] * (rg * (ONE - rg))
            dhn[j] = a_n * rg
            dr[j] = dh * z


# ------------------------------------------------------------------------------ softmax cross-entropy
@register_jitable(fastmath=_FASTMATH, error_model="numpy")
def _exp_f32_nonpos(x):
    """``exp(x)`` for float32 ``x <= 0``, vectorisable (relative error < 2e-7): Cephes' ``expf``
    polynomial on ``r = x - n ln2``, times ``2^n`` built from the bits of ``-n`` (no bit casts).
    Below -87 the result is ``exp(-87)`` (1.6e-38) instead of a subnormal or zero."""
    lim = np.float32(-87.0)
    x = lim if x < lim else x
    nf = np.floor(x * np.float32(1.44269504088896341) + HALF)
    r = x - nf * np.float32(0.693359375)
    r = r - nf * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * (r * r) + r + ONE
    k = np.int32(-nf)  # 0 .. 126
    sc = HALF if (k & 1) else ONE
    if k & 2:
        sc = sc * np.float32(0.25)
    if k & 4:
        sc = sc * np.float32(2.0**-4)
    if k & 8:
        sc = sc * np.float32(2.0**-8)
    if k & 16:
        sc = sc * np.float32(2.0**-16)
    if k & 32:
        sc = sc * np.float32(2.0**-32)
    if k & 64:
        sc = sc * np.float32(2.0**-64)
    return p * sc


exp_nonpos = _by_float_width(_exp_f32_nonpos, math.exp, "``exp(x)`` for ``x <= 0``.")


@njit(**_OPTS)
def softmax_xent(z, t, scale, grad):
    """Fused softmax cross-entropy over the rows of ``z (N, V)``, targets ``t (N,)`` (valid ids),
    row weights ``scale (N,)``: writes ``grad = scale (softmax(z) - onehot(t))`` and returns
    ``sum_n scale_n (logsumexp(z_n) - z_{n,t_n})`` accumulated in float64. One read of ``z``."""
    N, V = z.shape
    total = 0.0
    for n in range(N):
        zr, gr = z[n], grad[n]
        mx = zr[0]
        for v in range(1, V):
            mx = zr[v] if zr[v] > mx else mx
        s = zr[0] - zr[0]  # zero of z's type
        for v in range(V):
            e = exp_nonpos(zr[v] - mx)
            gr[v] = e
            s += e
        tn = t[n]
        w = scale[n]
        total += (math.log(s) - (zr[tn] - mx)) * w
        c = w / s
        for v in range(V):
            gr[v] = gr[v] * c
        gr[tn] -= w
    return total


# ------------------------------------------------------------------------------ embedding scatter
@njit(**_OPTS)
def scatter_add_rows(target, idx, rows):
    """``target[idx[n]] += rows[n]`` in the order of ``n`` (the same sums as ``np.add.at``)."""
    N, E = rows.shape
    V = target.shape[0]
    for n in range(N):
        k = idx[n]
        if k < 0 or k >= V:
            raise IndexError("scatter_add_rows: index out of range")
        tr, rr = target[k], rows[n]
        for e in range(E):
            tr[e] += rr[e]
    return target


# ------------------------------------------------------------------------------ Adam
@njit(cache=True, nogil=True, error_model="numpy")  # no fast-math: the same roundings as NumPy
def adam_step(p, g, m, v, vmax, decay, wd, w1, small_w1, omw1, b2, omb2, sbc2, eps, step):
    """One Adam/AdamW update of the flat arrays ``p, g, m, v`` (``vmax`` for AMSGrad, else None):
    the operations of :meth:`rnnlab.optim.Adam._update` in the same order, with the scalars in
    the parameters' dtype as NumPy's weak Python scalars are, so both paths round alike.

    ``p *= decay`` (decoupled decay; pass 1 otherwise); ``g + wd p`` (coupled decay; 0
    otherwise); ``m = lerp(m, g, w1)`` (``small_w1``: ``m + w1 (g - m)``, else
    ``g - (g - m) omw1``); ``v = b2 v + omb2 g g``; ``p -= step m / (sqrt(max(vmax, v)) / sbc2 + eps)``.
    """
    for i in range(p.shape[0]):
        pi = p[i]
        if decay != ONE:
            pi = pi * decay
        gi = g[i]
        if wd != ZERO:
            gi = gi + wd * pi
        mi = m[i]
        if small_w1:
            mi = mi + w1 * (gi - mi)
        else:
            mi = gi - (gi - mi) * omw1
        m[i] = mi
        vi = v[i] * b2
        vi = vi + omb2 * gi * gi
        v[i] = vi
        if vmax is not None:
            vi = vmax[i] if vmax[i] > vi else vi
            vmax[i] = vi
        d = np.sqrt(vi) / sbc2 + eps
        p[i] = pi - step * (mi / d)


# ------------------------------------------------------------------------------ namespace
class NumbaKernels:
    """The kernel set handed out by :func:`rnnlab.nn.cells.kernels_for` for NumPy arrays."""

    name = "numba"
    rnn_forward = staticmethod(rnn_forward)
    rnn_backward = staticmethod(rnn_backward)
    lstm_forward = staticmethod(lstm_forward)
    lstm_backward = staticmethod(lstm_backward)
    gru_forward = staticmethod(gru_forward)
    gru_backward = staticmethod(gru_backward)
    softmax_xent = staticmethod(softmax_xent)
    scatter_add_rows = staticmethod(scatter_add_rows)
    adam_step = staticmethod(adam_step)


KERNELS = NumbaKernels()
