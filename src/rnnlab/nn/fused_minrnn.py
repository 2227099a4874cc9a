"""Numba-compiled whole-sequence kernels of the minimal RNNs (:mod:`rnnlab.nn.minrnn`).

Each kernel runs the sequential form of the scan (:mod:`rnnlab.nn.scan`) for one layer in one
call, with the gates computed on the fly from the pre-activations ``P (T, B, G*H)`` of the
whole-sequence input GEMM: one pass over ``P`` and the states, vectorised over ``H`` (the
sigmoid is :mod:`rnnlab.nn.fused`'s tanh form, a rational function for float32, so LLVM can
vectorise it). Imported only through :func:`rnnlab.nn.minrnn.compiled_kernels`, like
:mod:`rnnlab.nn.fused` (numba installed, ``RNNLAB_NO_NUMBA`` unset); compiled on first use and
cached on disk.

Arguments: ``S (T+1, B, H)`` states with ``S[0] = h_0`` given; ``pad (T, B)`` bool, True past a
row's end (state frozen, zero gradients), or None; ``dY (T, B, H)`` or None; ``lam (B, H)``
holds ``dL/dh_T`` on entry and ``dL/dh_0`` on return; ``DH (T, B, H)`` receives ``lambda_t``
(the total ``dL/dh_t``); ``dP (T, B, G*H)`` the pre-activation gradients. The math is written
out in :mod:`rnnlab.nn.minrnn`.
"""
from __future__ import annotations

from numba import njit
from numba.extending import register_jitable

from .fused import _FASTMATH, _OPTS, HALF, ONE, ZERO, sigmoid

_INLINE = dict(fastmath=_FASTMATH, error_model="numpy")


@register_jitable(**_INLINE)
def _g(p):
    """The candidate's activation ``g(p) = p + 1/2`` for ``p >= 0``, ``sigmoid(p)`` below."""
    return p + HALF if p >= ZERO else sigmoid(p)


@register_jitable(**_INLINE)
def _dg(p):
    """``g'(p)``: 1 for ``p >= 0``, ``s (1 - s)`` with ``s = sigmoid(p)`` below."""
    if p >= ZERO:
        return ONE
    s = sigmoid(p)
    return s * (ONE - s)


@njit(**_OPTS)
def mingru_forward(P, S, pad):
    """``h_t = h_{t-1} + z (g(p) - h_{t-1})`` with ``z = sigmoid(k)``; ``P = [k | p]``."""
    T, B, H = S.shape[0] - 1, S.shape[1], S.shape[2]
    for t in range(T):
        for r in range(B):
            hp, hc = S[t, r], S[t + 1, r]
            if pad is not None and pad[t, r]:
                for j in range(H):
                    hc[j] = hp[j]
                continue
            k, p = P[t, r, :H], P[t, r, H:]
            for j in range(H):
                z = sigmoid(k[j])
                hc[j] = hp[j] + z * (_g(p[j]) - hp[j])


@njit(**_OPTS)
def mingru_backward(dY, lam, pad, P, S, DH, dP):
    """``lambda_t = dy_t + (1 - z_{t+1}) lambda_{t+1}``; ``dk = lambda (g(p) - h_{t-1}) z (1 - z)``,
    ``dp = lambda z g'(p)``."""
    T, B, H = DH.shape
    for t in range(T - 1, -1, -1):
        for r in range(B):
            lr, dh = lam[r], DH[t, r]
            if pad is not None and pad[t, r]:
                for j in range(H):
                    dh[j] = lr[j]
                for j in range(2 * H):
                    dP[t, r, j] = ZERO
                continue
            if dY is not None:
                for j in range(H):
                    lr[j] += dY[t, r, j]
            k, p, hp = P[t, r, :H], P[t, r, H:], S[t, r]
            dk, dp = dP[t, r, :H], dP[t, r, H:]
            for j in range(H):
                z = sigmoid(k[j])
                pj = p[j]
                l = lr[j]
                dh[j] = l
                dk[j] = l * (_g(pj) - hp[j]) * z * (ONE - z)
                dp[j] = l * z * _dg(pj)
                lr[j] = l * (ONE - z)


@register_jitable(**_INLINE)
def _lstm_gates(kf, ki):
    """``(f, i, f', i')`` with ``f' = f / (f + i)``, ``i' = i / (f + i)``."""
    f = sigmoid(kf)
    i = sigmoid(ki)
    s = f + i
    if s > ZERO:
        return f, i, f / s, i / s
    return f, i, HALF, HALF  # both gates rounded to zero (float64 beyond |k| ~ 37)


@njit(**_OPTS)
def minlstm_forward(P, S, pad):
    """``h_t = f' h_{t-1} + i' g(p)``; ``P = [k_f | k_i | p]``."""
    T, B, H = S.shape[0] - 1, S.shape[1], S.shape[2]
    for t in range(T):
        for r in range(B):
            hp, hc = S[t, r], S[t + 1, r]
            if pad is not None and pad[t, r]:
                for j in range(H):
                    hc[j] = hp[j]
                continue
            kf, ki, p = P[t, r, :H], P[t, r, H : 2 * H], P[t, r, 2 * H :]
            for j in range(H):
                f, i, fn, inn = _lstm_gates(kf[j], ki[j])
                hc[j] = fn * hp[j] + inn * _g(p[j])


@njit(**_OPTS)
def minlstm_backward(dY, lam, pad, P, S, DH, dP):
    """``lambda_t = dy_t + f'_{t+1} lambda_{t+1}``; with ``du = f' i' lambda (g(p) - h_{t-1})``:
    ``dk_f = -du (1 - f)``, ``dk_i = du (1 - i)``, ``dp = lambda i' g'(p)``."""
    T, B, H = DH.shape
    for t in range(T - 1, -1, -1):
        for r in range(B):
            lr, dh = lam[r], DH[t, r]
            if pad is not None and pad[t, r]:
                for j in range(H):
                    dh[j] = lr[j]
                for j in range(3 * H):
                    dP[t, r, j] = ZERO
                continue
            if dY is not None:
                for j in range(H):
                    lr[j] += dY[t, r, j]
            kf, ki, p, hp = P[t, r, :H], P[t, r, H : 2 * H], P[t, r, 2 * H :], S[t, r]
            dkf, dki, dp = dP[t, r, :H], dP[t, r, H : 2 * H], dP[t, r, 2 * H :]
            for j in range(H):
                f, i, fn, inn = _lstm_gates(kf[j], ki[j])
                pj = p[j]
                l = lr[j]
                dh[j] = l
                du = fn * inn * l * (_g(pj) - hp[j])
                dkf[j] = -du * (ONE - f)
                dki[j] = du * (ONE - i)
                dp[j] = l * inn * _dg(pj)
                lr[j] = l * fn
