"""The affine layer ``y = x W^T + b`` over any number of leading dimensions.

Applied to a time-major sequence of hidden states ``h (T, B, H)`` it computes the read-out
``y_t = W_hy h_t + b_y`` of every step with a single GEMM over the ``T*B`` rows.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..errors import RnnlabError
from . import cells
from . import init as initializers
from . import workspace
from .module import Module


class Linear(Module):
    r"""Affine map ``y = x W^T + b``.

    Forward, for every leading index ``n``:

    .. math:: y_n = W x_n + b

    Backward, summed over all rows ``n`` of the flattened leading dimensions:

    .. math::
        \partial L/\partial W = \sum_n dy_n x_n^T, \quad
        \partial L/\partial b = \sum_n dy_n, \quad
        \partial L/\partial x_n = W^T dy_n

    Shape legend: ``...`` any leading dims (e.g. ``T, B``), ``N`` their product, ``I`` =
    ``in_features``, ``O`` = ``out_features``.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool
        Whether to add ``b``.
    dtype : numpy dtype
        float32 by default, float64 for gradient checks.
    rng : np.random.Generator, optional
        Initialisation randomness; a fresh unseeded generator when ``None``.
    init : {"uniform", "xavier"}
        ``"uniform"``: PyTorch's default, ``W, b ~ U(-1/sqrt(I), 1/sqrt(I))``.
        ``"xavier"``: Glorot uniform ``W``, zero ``b``.
    name_w, name_b : str
        Keys of the weight ``(O, I)`` and bias ``(O,)`` in ``params`` (PyTorch layout), so a
        read-out can be called ``W_hy`` / ``b_y``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        dtype=np.float32,
        rng: np.random.Generator | None = None,
        init: str = "uniform",
        name_w: str = "weight",
        name_b: str = "bias",
    ) -> None:
        super().__init__()
        if int(in_features) < 1 or int(out_features) < 1:
            raise RnnlabError(
                f"Linear needs positive sizes, got in_features={in_features}, "
                f"out_features={out_features}"
            )
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.name_w, self.name_b = name_w, (name_b if bias else None)
        self.init = init
        rng = rng if rng is not None else np.random.default_rng()
        shape = (self.out_features, self.in_features)
        if init == "uniform":
            w = initializers.uniform_fan(rng, shape, fan=self.in_features, dtype=dtype)
            b = initializers.uniform_fan(rng, (self.out_features,), fan=self.in_features, dtype=dtype)
        elif init == "xavier":
            w = initializers.xavier_uniform(rng, shape, dtype=dtype)
            b = np.zeros(self.out_features, dtype=dtype)
        else:
            raise RnnlabError(f"unknown Linear init {init!r}: use 'uniform' or 'xavier'")
        self.add_param(name_w, w)
        if bias:
            self.add_param(name_b, b)

    @property
    def weight(self):
        return self.params[self.name_w]

    @property
    def bias(self):
        return self.params[self.name_b] if self.name_b is not None else None

    def forward(self, x):
        """``x (..., I) -> y (..., O)``; ``cache = (x2 (N, I), lead shape)``."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Linear expects (..., {self.in_features}) input, got {tuple(x.shape)}")
        xp = backend.array_module(x)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # (N, I)
        y = workspace.empty((x2.shape[0], self.out_features), xp.result_type(x2, self.weight), xp)
        cells.matmul(xp, x2, self.weight.T, y)  # (N, O): the one GEMM
        if self.name_b is not None:
            y += self.bias
        return y.reshape(*lead, self.out_features), (x2, lead)  # (..., O)

    def backward(self, dy, cache):
        """``dy (..., O) -> dx (..., I)``; adds ``dW (O, I)`` and ``db (O,)`` into ``grads``."""
        x2, lead = cache
        xp = backend.array_module(dy)
        dy2 = dy.reshape(-1, self.out_features)  # (N, O)
        cells.matmul(xp, dy2.T, x2, self.grads[self.name_w], add=True)  # (O, N) @ (N, I) -> (O, I)
        if self.name_b is not None:
            self.grads[self.name_b] += dy2.sum(axis=0)  # (O,)
        dx = workspace.empty((dy2.shape[0], self.in_features), xp.result_type(dy2, self.weight), xp)
        cells.matmul(xp, dy2, self.weight, dx)  # (N, O) @ (O, I) -> (N, I)
        return dx.reshape(*lead, self.in_features)  # (..., I)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.name_b is not None}"
        )
