"""Gradient clipping, in place, with ``torch.nn.utils`` semantics: :func:`clip_grad_norm` (the
joint norm of all gradients) and :func:`clip_grad_value` (each entry)."""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..errors import RnnlabError


def clip_grad_norm(grads: dict, max_norm: float, norm_type: float = 2.0) -> float:
    r"""Rescale all gradients together so that their joint norm is at most ``max_norm``.

    ``torch.nn.utils.clip_grad_norm_`` semantics::

        N = ‖(‖g_1‖_p, ‖g_2‖_p, ...)‖_p        (the p-norm of all entries as one vector)
        c = min(max_norm / (N + 1e-6), 1)
        g_i <- c g_i                            (in place)

    Parameters
    ----------
    grads : dict[str, array]
        Gradient arrays, modified in place.
    max_norm : float
        Largest allowed total norm.
    norm_type : float
        ``p``; ``float("inf")`` (or ``"inf"``) for the max-abs norm.

    Returns
    -------
    float
        The total norm ``N`` *before* clipping. It is ``nan`` or ``inf`` when a gradient is
        not finite; the gradients are then scaled by ``nan`` or ``0`` as in PyTorch (so
        non-finite entries become ``nan``): check the returned value and skip such a step.
    """
    arrays = list(grads.values())
    if not arrays:
        return 0.0
    p = float(norm_type)
    if not p > 0.0:
        raise RnnlabError(f"invalid norm_type {norm_type}: use a p > 0 or 'inf'")
    max_norm = float(max_norm)
    xp = backend.array_module(*arrays)
    if math.isinf(p):
        per_array = xp.stack([xp.max(xp.abs(g)) if g.size else xp.zeros((), g.dtype) for g in arrays])
        total = backend.to_float(xp.max(per_array))
    elif p == 2.0:
        per_array = xp.stack([xp.sqrt(xp.sum(g * g)) for g in arrays])
        total = backend.to_float(xp.sqrt(xp.sum(per_array * per_array)))
    else:
        per_array = xp.stack([xp.sum(xp.abs(g) ** p) ** (1.0 / p) for g in arrays])
        total = backend.to_float(xp.sum(per_array ** p) ** (1.0 / p))
    coef = max_norm / (total + 1e-6)
    if math.isnan(coef):
        scale = coef
    else:
        scale = min(coef, 1.0)
    if scale != 1.0:
        with np.errstate(invalid="ignore", over="ignore"):  # inf * 0 -> nan is intended
            for g in arrays:
                g *= scale
    return total


def clip_grad_value(grads: dict, clip_value: float) -> None:
    """Clamp every gradient entry into ``[-clip_value, clip_value]``, in place.

    ``torch.nn.utils.clip_grad_value_`` semantics; ``nan`` entries stay ``nan``.
    """
    v = float(clip_value)
    for g in grads.values():
        backend.array_module(g).clip(g, -v, v, out=g)
