r"""Layer normalisation (Ba, Kiros & Hinton 2016) over the last axis, with its backward by hand.

Forward, for every row ``x (C,)`` of the flattened leading dimensions::

    mu   = mean(x),   var = mean((x - mu)^2),   r = 1 / sqrt(var + eps)
    xhat = (x - mu) r
    y    = gamma * xhat + beta

Backward, with ``dxhat = gamma * dy`` (row-wise means ``<.>`` over ``C``)::

    dgamma = sum_rows dy * xhat,    dbeta = sum_rows dy
    dx     = r (dxhat - <dxhat> - xhat <dxhat * xhat>)

(``x`` enters ``xhat`` directly and through ``mu`` and ``r``; the two mean terms are those
paths: ``dmu`` removes the mean of ``dxhat``, ``dr`` its component along ``xhat``.)

Shape legend: ``...`` any leading dims (``T, B``), ``N`` their product, ``C`` features.
Parameters ``weight (C,)`` (gamma, ones) and ``bias (C,)`` (beta, zeros): PyTorch's names and
``torch.nn.LayerNorm``'s biased variance.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..errors import RnnlabError
from .cells import compiled_module
from .module import Module


class LayerNorm(Module):
    """``LayerNorm(C, eps=1e-5)``: ``forward(x (..., C)) -> (y, cache)``, ``backward(dy, cache)
    -> dx``; adds ``dgamma``, ``dbeta`` into ``grads``."""

    def __init__(self, normalized_shape: int, eps: float = 1e-5, dtype=np.float32) -> None:
        super().__init__()
        if int(normalized_shape) < 1:
            raise RnnlabError(f"LayerNorm needs a positive size, got {normalized_shape}")
        self.C, self.eps = int(normalized_shape), float(eps)
        self.add_param("weight", np.ones(self.C, dtype))
        self.add_param("bias", np.zeros(self.C, dtype))

    def forward(self, x):
        """``x (..., C) -> y (..., C)``; ``cache = (xhat (N, C), r (N, 1))``."""
        if x.shape[-1] != self.C:
            raise ValueError(f"LayerNorm expects (..., {self.C}) input, got {tuple(x.shape)}")
        xp = backend.array_module(x)
        x2 = x.reshape(-1, self.C)  # (N, C)
        fk = compiled_module(xp, x.dtype, "fused_transformer")
        if fk is not None and x2.dtype == self.params["weight"].dtype:  # one pass per row (numba)
            x2 = xp.ascontiguousarray(x2)
            y, xhat = xp.empty_like(x2), xp.empty_like(x2)
            r = xp.empty((x2.shape[0], 1), x2.dtype)
            fk.layernorm_forward(x2, self.params["weight"], self.params["bias"], self.eps, y, xhat, r)
            return y.reshape(x.shape), (xhat, r)
        xhat = x2 - x2.mean(axis=1, keepdims=True)  # (N, C)
        var = xp.einsum("nc,nc->n", xhat, xhat)[:, None] / self.C  # (N, 1)
        r = 1.0 / xp.sqrt(var + self.eps)  # (N, 1)
        xhat *= r
        y = xhat * self.params["weight"]
        y += self.params["bias"]
        return y.reshape(x.shape), (xhat, r)

    def backward(self, dy, cache):
        """``dy (..., C) -> dx (..., C)``."""
        xhat, r = cache
        xp = backend.array_module(dy)
        dy2 = dy.reshape(-1, self.C)  # (N, C)
        fk = compiled_module(xp, dy.dtype, "fused_transformer")
        if fk is not None and dy2.dtype == xhat.dtype:  # one pass per row (numba)
            dx = xp.empty_like(xhat)
            fk.layernorm_backward(xp.ascontiguousarray(dy2), xhat, r, self.params["weight"], dx,
                                  self.grads["weight"], self.grads["bias"])
            return dx.reshape(dy.shape)
        self.grads["weight"] += xp.einsum("nc,nc->c", dy2, xhat)
        self.grads["bias"] += dy2.sum(axis=0)
        dxhat = dy2 * self.params["weight"]  # (N, C)
        proj = xp.einsum("nc,nc->n", dxhat, xhat)[:, None] / self.C  # (N, 1): <dxhat * xhat>
        dx = dxhat - dxhat.mean(axis=1, keepdims=True)
        dx -= xhat * proj
        dx *= r
        return dx.reshape(dy.shape)

    def extra_repr(self) -> str:
        return f"{self.C}, eps={self.eps}"
