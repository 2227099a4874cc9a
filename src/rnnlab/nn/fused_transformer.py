"""Numba-compiled kernels of the Transformer's element-wise pieces: GELU and LayerNorm, forward
and backward, each one pass over its rows instead of a dozen NumPy passes with temporaries.

The math is :mod:`rnnlab.nn.gelu`'s and :mod:`rnnlab.nn.layernorm`'s (written out there); these
are the same formulas, row by row. Imported only through :func:`rnnlab.nn.cells.compiled_module` (numba installed,
``RNNLAB_NO_NUMBA`` unset, NumPy float32/float64 arrays), compiled on first use and cached on
disk, like :mod:`rnnlab.nn.fused`, whose ``tanh`` (a rational approximation in float32, exact in
float64) they use. Row statistics of LayerNorm are accumulated in float64.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .fused import _OPTS, HALF, ONE, tanh

def gelu_constants(dtype):
    """``(K, A, 3A)`` of the GELU in ``dtype`` (passed to the kernels, so float64 gets them exact)."""
    c = np.dtype(dtype).type
    return c(math.sqrt(2.0 / math.pi)), c(0.044715), c(3 * 0.044715)


@njit(**_OPTS)
def gelu_forward(x, y, th, _K, _A):
    """``th = tanh(K (x + A x^3))``, ``y = x (1 + th) / 2``; all ``(N, C)``."""
    N, C = x.shape
    for r in range(N):
        xr, yr, tr = x[r], y[r], th[r]
        for j in range(C):
            v = xr[j]
            t = tanh(_K * (v + _A * v * v * v))
            tr[j] = t
            yr[j] = HALF * v * (ONE + t)


@njit(**_OPTS)
def gelu_backward(x, th, dy, dx, _K, _A3):
    """``dx = dy ((1 + th) + x (1 - th^2) K (1 + 3 A x^2)) / 2``."""
    N, C = x.shape
    for r in range(N):
        xr, tr, dyr, dxr = x[r], th[r], dy[r], dx[r]
        for j in range(C):
            v, t = xr[j], tr[j]
            dxr[j] = dyr[j] * HALF * (ONE + t + v * (ONE - t * t) * _K * (ONE + _A3 * v * v))


@njit(**_OPTS)
def layernorm_forward(x, w, b, eps, y, xhat, r_out):
    """Per row: ``xhat = (x - mean) r``, ``r = 1 / sqrt(var + eps)``, ``y = w xhat + b``."""
    N, C = x.shape
    for n in range(N):
        xr = x[n]
        s = 0.0
        for j in range(C):
            s += xr[j]
        mu = s / C
        v = 0.0
        for j in range(C):
            d = xr[j] - mu
            v += d * d
        r = 1.0 / math.sqrt(v / C + eps)
        r_out[n, 0] = r
        hr, yr = xhat[n], y[n]
        for j in range(C):
            h = (xr[j] - mu) * r
            hr[j] = h
            yr[j] = h * w[j] + b[j]


@njit(**_OPTS)
def layernorm_backward(dy, xhat, r, w, dx, dw, db):
    """Per row: ``dxhat = w dy``, ``dx = r (dxhat - <dxhat> - xhat <dxhat xhat>)``; adds
    ``dw += dy xhat`` and ``db += dy`` over the rows."""
    N, C = dy.shape
    for n in range(N):
        dyr, hr, dxr = dy[n], xhat[n], dx[n]
        s1 = 0.0
        s2 = 0.0
        for j in range(C):
            g = dyr[j] * w[j]
            s1 += g
            s2 += g * hr[j]
            dw[j] += dyr[j] * hr[j]
            db[j] += dyr[j]
        m1, m2 = s1 / C, s2 / C
        rn = r[n, 0]
        for j in range(C):
            dxr[j] = rn * (dyr[j] * w[j] - m1 - hr[j] * m2)

