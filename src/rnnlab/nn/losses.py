r"""Losses that return their own gradient: ``loss, dpred = loss_fn(pred, target)``.

Each function returns the loss as a 0-d array of the prediction's dtype (on the prediction's
device, so no host sync is forced) and the gradient of *that* loss with respect to the
prediction, already divided by whatever the reduction divides by.

Softmax cross-entropy for logits ``z (N, V)`` and targets ``y (N,)``, with weights
``w_n = 1[y_n != ignore_index] * mask_n``:

.. math::
    \ell_n = \log \sum_v e^{z_{nv}} - z_{n y_n}, \quad
    L = \frac{\sum_n w_n \ell_n}{\sum_n w_n}, \quad
    \frac{\partial L}{\partial z_{nv}} = \frac{w_n}{\sum_m w_m}
        \left(\mathrm{softmax}(z_n)_v - 1[v = y_n]\right)

(``reduction="sum"`` drops the division). When every item is ignored the mean is defined as
0 with a zero gradient, rather than PyTorch's NaN.
"""
from __future__ import annotations

from .. import backend
from . import workspace
from .cells import fused_kernels


def log_softmax(x, axis: int = -1):
    """``x - max(x) - log(sum(exp(x - max(x))))`` along ``axis`` (stable for any finite input)."""
    xp = backend.array_module(x)
    out = x - x.max(axis=axis, keepdims=True)
    lse = xp.log(xp.exp(out).sum(axis=axis, keepdims=True))
    out -= lse
    return out


def softmax(x, axis: int = -1):
    """``exp(x - max(x)) / sum(exp(x - max(x)))`` along ``axis``."""
    xp = backend.array_module(x)
    out = x - x.max(axis=axis, keepdims=True)
    xp.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)
    return out


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def softmax_cross_entropy(logits, targets, ignore_index: int | None = -1, mask=None,
                          reduction: str = "mean"):
    """Fused, numerically stable softmax + negative log-likelihood, with its gradient.

    Parameters
    ----------
    logits : array (..., V)
        Unnormalised scores, float.
    targets : int array (...)
        Class ids in ``[0, V)``; items equal to ``ignore_index`` contribute nothing.
    ignore_index : int or None
        Target value to skip (``-1`` by default, PyTorch uses ``-100``); ``None`` skips nothing.
    mask : array (...), optional
        Per-item weights, typically 0/1 (0 = ignore). Combined with ``ignore_index``.
    reduction : {"mean", "sum"}
        ``"mean"`` divides by the total weight (the number of kept items for a 0/1 mask).

    Returns
    -------
    loss : 0-d array, dtype of ``logits``
    dlogits : array (..., V)
        ``dloss/dlogits``, zero on ignored items.

    Memory: one ``(N, V)`` buffer holds ``logits - max``, then its exponent, then the gradient.
    With numba (NumPy float32/float64) the same math runs as one fused pass per row
    (:func:`rnnlab.nn.fused.softmax_xent`) writing the gradient buffer directly.
    """
    _check_reduction(reduction)
    xp = backend.array_module(logits, targets)
    V = logits.shape[-1]
    if tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"targets shape {tuple(targets.shape)} must equal logits shape without the class "
            f"axis {tuple(logits.shape[:-1])}"
        )
    z = logits.reshape(-1, V)  # (N, V)
    t = targets.reshape(-1)  # (N,)
    N = z.shape[0]

    keep = xp.ones(N, dtype=bool) if ignore_index is None else (t != ignore_index)  # (N,)
    w = keep.astype(z.dtype)  # (N,)
    if mask is not None:
        w *= mask.reshape(-1)  # (N,)
    t_safe = xp.where(keep, t, 0)  # (N,): ignored items read class 0, weighted 0
    if N and (int(t_safe.min()) < 0 or int(t_safe.max()) >= V):
        raise ValueError(f"targets must lie in [0, {V}) or equal ignore_index={ignore_index}")
    if reduction == "mean":
        total = w.sum()
        denom = xp.where(total > 0, total, xp.ones_like(total))  # all ignored -> 0 / 1 = 0
        scale = w / denom  # (N,)
    else:
        scale = w

    fk = fused_kernels(xp, z.dtype)
    if fk is not None and N and V:  # one fused pass over (N, V) (numba)
        grad = workspace.empty((N, V), z.dtype, xp)
        loss = fk.softmax_xent(z, t_safe, scale, grad)
        return xp.asarray(loss, dtype=z.dtype), grad.reshape(logits.shape)

    rows = xp.arange(N)
    buf = z - z.max(axis=1, keepdims=True)  # (N, V): shifted logits, max 0
    z_t = buf[rows, t_safe]  # (N,) shifted target logit (a copy)
    xp.exp(buf, out=buf)  # (N, V): exp, each row sums to >= 1
    s = buf.sum(axis=1)  # (N,)
    nll = xp.log(s)  # (N,)
    nll -= z_t  # (N,) per-item loss
    loss = (nll * scale).sum()

    buf /= s[:, None]  # (N, V) softmax
    buf[rows, t_safe] -= 1  # (N, V) softmax - onehot
    buf *= scale[:, None]  # (N, V) gradient of the returned loss
    return xp.asarray(loss, dtype=z.dtype), buf.reshape(logits.shape)  # 0-d, (..., V)


def mse(pred, target, mask=None, reduction: str = "mean"):
    r"""Mean squared error :math:`L = \sum_i m_i (p_i - t_i)^2 / \sum_i m_i` and ``dL/dp``.

    Parameters
    ----------
    pred, target : arrays of the same shape ``(...)``
    mask : array, optional
        Weights broadcastable to ``pred.shape`` (e.g. ``(T, B, 1)`` for a per-step mask of
        ``(T, B, D)`` predictions); without it every element counts (``torch.nn.MSELoss``).
    reduction : {"mean", "sum"}

    Returns
    -------
    loss : 0-d array
    dpred : array like ``pred``: ``2 m (p - t) / sum(m)`` (no division for ``"sum"``).
    All-masked input gives loss 0 and a zero gradient.
    """
    _check_reduction(reduction)
    xp = backend.array_module(pred, target)
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    diff = pred - target  # (...)
    if mask is None:
        wdiff = diff
        total = pred.size
    else:
        m = xp.broadcast_to(mask, pred.shape).astype(diff.dtype)  # (...)
        wdiff = m * diff
        total = m.sum()
    loss = (wdiff * diff).sum()
    if reduction == "mean":
        denom = xp.where(total > 0, total, 1) if mask is not None else max(total, 1)
        loss = loss / denom
        grad = wdiff * (2 / denom)
    else:
        grad = wdiff * 2
    return xp.asarray(loss, dtype=diff.dtype), grad.astype(diff.dtype, copy=False)
