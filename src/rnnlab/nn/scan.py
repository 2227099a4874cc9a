r"""The linear recurrence of the minimal RNNs over a whole sequence, and its adjoint.

Forward, element-wise over ``B, H`` (shapes ``a, b, h (T, B, H)``, ``h_0 (B, H)``)::

    h_t = a_t * h_{t-1} + b_t,         t = 1 .. T
        = A_t h_0 + sum_{s<=t} (A_t / A_s) b_s,       A_t = a_1 a_2 ... a_t

Nothing inside the recurrence depends on ``h_{t-1}`` but this product and sum, so it is an
associative scan: ``(a, b) o (a', b') = (a a', a' b + b')``. Two ways to evaluate it:

**Parallel form in log space** (Heinsen 2023, used by Feng et al. 2024 and lucidrains' minGRU),
for ``a_t > 0``, ``b_t > 0`` given as ``log a``, ``log b``::

    a*_t     = sum_{r<=t} log a_r                                  (a cumulative sum)
    log h_t  = a*_t + logcumsumexp_{s<=t} (log b_s - a*_s)         (the h_0 = 0 part)
    h_t     += exp(a*_t) h_0                                       (h_0 in linear space, any sign)

Two cumulative operations over time and element-wise maps, each one call over the whole
``(T, B, H)`` array: on a GPU a cumulative sum is itself a parallel scan, so no step waits for
the previous one. ``exp(a*_t + ...)`` is evaluated as one exponent, so nothing overflows even
when ``A_t`` underflows; the price is rounding ``~eps * |a*_t|`` in ``log h_t`` (``a*`` grows
like ``-T``), negligible in float64 and about ``1e-5`` relative in float32 at ``T = 256``.

**Sequential form**: the loop ``h_t = a_t h_{t-1} + b_t`` itself, vectorised over the ``B*H``
independent columns. It does the least work (two flops per element, no logarithms), is exact to
one rounding per step, and on a CPU, where the ``B*H`` columns already fill the vector units,
it is the fastest evaluation of the scan (numbers in docs/experiments.md, ``parallel``).

**Adjoint.** Let ``g_t = dL/dh_t`` be the gradient that reaches ``h_t`` from outside the
recurrence (from the output ``y_t = h_t``; ``g_T`` also holds ``dL/dh_T`` of the final state).
The total gradient ``lambda_t = dL/dh_t`` obeys the same recurrence run backwards::

    lambda_t = g_t + a_{t+1} lambda_{t+1}                          (lambda_{T+1} = 0)
             = sum_{s>=t} exp(a*_s - a*_t) g_s
    dL/da_t  = lambda_t h_{t-1},    dL/db_t = lambda_t,    dL/dh_0 = a_1 lambda_1

so backward is a reverse scan. In log space ``g`` (of any sign) is split into ``g+ = max(g, 0)``
and ``g- = max(-g, 0)``, each scanned as a reverse logcumsumexp, and
``lambda_t = exp(R+_t - a*_t) - exp(R-_t - a*_t)`` with ``R(+-)_t = logsumexp_{s>=t}(a*_s +
log g(+-)_s)``; the difference rounds like the plain signed sum it equals.

Padding (``lengths``): a step past a row's end has ``a = 1, b = 0`` (``log a = 0``,
``log b = -inf``) and ``g = 0``, so the state passes through unchanged and so does ``lambda``.

Functions take arrays of any array module (NumPy, CuPy) and work in their dtype.
"""
from __future__ import annotations

import numpy as np

from .. import backend


def _cumsum_time(x, xp):
    """``cumsum(x, axis=0)``."""
    return xp.cumsum(x, axis=0)


def logcumsumexp(v, reverse: bool = False):
    """``out_t = log sum_{s<=t} exp(v_s)`` along axis 0 (``s >= t`` with ``reverse``), stable for
    any values including ``-inf``. ``np.logaddexp.accumulate`` where the array module has it,
    else a loop over the rows (CuPy)."""
    xp = backend.array_module(v)
    src = v[::-1] if reverse else v
    acc = getattr(xp.logaddexp, "accumulate", None)
    if acc is not None:
        out = acc(src, axis=0)
    else:  # pragma: no cover - CuPy
        out = xp.empty_like(src)
        out[0] = src[0]
        for t in range(1, src.shape[0]):
            xp.logaddexp(out[t - 1], src[t], out=out[t])
    return out[::-1] if reverse else out


def log_scan(log_a, log_b, h0):
    """``h (T, B, H)`` of ``h_t = a_t h_{t-1} + b_t`` from ``log a``, ``log b (T, B, H)`` and
    ``h0 (B, H)`` (or None for zeros), by the parallel log-space form above."""
    xp = backend.array_module(log_a)
    astar = _cumsum_time(log_a, xp)  # (T, B, H): log A_t
    with np.errstate(invalid="ignore"):  # -inf - (-inf) cannot occur: a* is finite
        h = logcumsumexp(log_b - astar)  # (T, B, H)
    h += astar
    xp.exp(h, out=h)
    if h0 is not None:
        h += xp.exp(astar) * h0
    return h


def log_scan_adjoint(log_a, g, dh_n=None):
    """``(lambda (T, B, H), dL/dh_0 (B, H))`` for the gradient ``g (T, B, H)`` arriving at every
    ``h_t`` (``dh_n``: the extra gradient of ``h_T``), by the reverse log-space scan above."""
    xp = backend.array_module(log_a)
    if dh_n is not None:
        g = g.copy()
        g[-1] += dh_n
    astar = _cumsum_time(log_a, xp)  # (T, B, H)
    lam = None
    with np.errstate(divide="ignore", invalid="ignore"):
        for sign in (1, -1):
            part = xp.log(xp.maximum(sign * g, 0))  # (T, B, H): log g+ or log g-, -inf where 0
            part += astar
            r = logcumsumexp(part, reverse=True)  # (T, B, H)
            if lam is None:
                lam, first = xp.exp(r - astar), xp.exp(r[0])
            else:
                lam -= xp.exp(r - astar)
                first -= xp.exp(r[0])
    return lam, first  # a_1 lambda_1 = exp(R_1 - a*_1 + log a_1) = exp(R_1)


def seq_scan(a, b, S):
    """The sequential form into ``S (T+1, B, H)``: ``S[0]`` holds ``h_0`` on entry, ``S[t]`` is
    ``h_t`` on return (one ufunc pass per step)."""
    xp = backend.array_module(a)
    for t in range(a.shape[0]):
        xp.multiply(a[t], S[t], out=S[t + 1])
        S[t + 1] += b[t]
    return S


def seq_scan_adjoint(a, g, dh_n, lam):
    """The reverse sequential scan: ``lam (T, B, H)`` receives ``lambda_t``; returns
    ``dL/dh_0 = a_1 lambda_1``. ``g`` may be None (nothing from the outputs)."""
    xp = backend.array_module(a)
    T, B, H = a.shape
    cur = xp.zeros((B, H), a.dtype) if dh_n is None else xp.array(dh_n, dtype=a.dtype)
    for t in range(T - 1, -1, -1):
        if g is not None:
            cur += g[t]
        lam[t] = cur
        cur *= a[t]
    return cur
