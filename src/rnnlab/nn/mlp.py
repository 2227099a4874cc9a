"""A multi-layer perceptron: Linear layers with a nonlinearity (and optional dropout) between."""
from __future__ import annotations

import numpy as np

from .. import backend
from ..errors import RnnlabError
from .activations import get_activation
from .linear import Linear
from .module import Module


class MLP(Module):
    r"""``sizes = [S_0, ..., S_n]`` gives ``n`` Linear layers ``fc0 .. fc{n-1}``:

    .. math::
        h_0 = x, \quad
        h_{i+1} = m_{i+1} \odot f(W_i h_i + b_i) \ (i < n - 1), \quad
        y = W_{n-1} h_{n-1} + b_{n-1}

    where ``f`` is the activation (none after the last layer) and ``m`` an inverted-dropout mask,
    ``m = 1[u >= p] / (1 - p)`` with ``u ~ U[0, 1)``, drawn only in training mode when
    ``dropout = p > 0`` (otherwise ``m = 1``). Dropout sits between hidden layers, not on the
    input or the output.

    Shape legend: ``...`` any leading dims; ``x (..., S_0) -> y (..., S_n)``.

    Parameters
    ----------
    sizes : list[int]
        At least two positive sizes.
    activation : {"tanh", "relu", "sigmoid", "identity"}
    dropout : float in [0, 1)
    dtype : numpy dtype
    rng : np.random.Generator, optional
        Initialisation randomness, shared by the layers in order; unseeded when ``None``.
    bias : bool
    """

    def __init__(
        self,
        sizes: list[int],
        activation: str = "tanh",
        dropout: float = 0.0,
        dtype=np.float32,
        rng: np.random.Generator | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or min(sizes) < 1:
            raise RnnlabError(f"MLP needs at least two positive sizes, got {sizes}")
        if not 0.0 <= float(dropout) < 1.0:
            raise RnnlabError(f"dropout must be in [0, 1), got {dropout}")
        self.sizes = sizes
        self.activation = activation
        self.act = get_activation(activation)
        self.dropout = float(dropout)
        rng = rng if rng is not None else np.random.default_rng()
        self.layers: list[Linear] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            self.layers.append(self.add_child(f"fc{i}", Linear(a, b, bias=bias, dtype=dtype, rng=rng)))

    def forward(self, x, rng: np.random.Generator | None = None):
        """``x (..., S_0) -> y (..., S_n)``; ``rng`` is required when dropout is active.

        ``cache`` is a list with, per layer, ``(linear cache, activation output, dropout mask)``
        (the last two ``None`` where not applied).
        """
        use_dropout = self.training and self.dropout > 0.0
        if use_dropout and rng is None:
            raise ValueError("MLP.forward: dropout is active in training mode, pass rng=")
        xp = backend.array_module(x)
        caches = []
        h = x
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            z, lc = layer.forward(h)
            if i == last:
                caches.append((lc, None, None))
                return z, caches
            a = self.act.f(z, out=z)  # z is ours alone: activate in place
            mask = None
            if use_dropout:
                keep = rng.random(a.shape) >= self.dropout  # host draw, (..., S_i+1)
                mask = xp.asarray(keep, dtype=a.dtype)
                mask *= 1.0 / (1.0 - self.dropout)
                h = a * mask
            else:
                h = a
            caches.append((lc, a, mask))

    def backward(self, dy, cache):
        """``dy (..., S_n) -> dx (..., S_0)``; adds every layer's gradients into ``grads``."""
        d = dy
        for i in range(len(self.layers) - 1, -1, -1):
            lc, a, mask = cache[i]
            if a is not None:  # through dropout and the activation; d is a fresh array here
                if mask is not None:
                    d *= mask
                d *= self.act.df(a)
            d = self.layers[i].backward(d, lc)
        return d

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, activation={self.activation!r}, dropout={self.dropout}"
