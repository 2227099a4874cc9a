"""A dilated 1-D convolution over time, causal by default, on time-major input.

Stacking causal convolutions with growing dilation gives a feed-forward model whose receptive
field ``1 + sum_l d_l (k - 1)`` is fixed by construction — the baseline that the recurrent
models are compared against.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..errors import RnnlabError
from . import init as initializers
from .module import Module


class Conv1d(Module):
    r"""``y_t = b + \sum_{j=0}^{k-1} W_{:,:,j} \, x_{t + j d - p}`` (zero outside ``[0, T)``).

    ``p`` is the left padding: ``d (k - 1)`` when ``causal`` (so ``y_t`` sees
    ``x_t, x_{t-d}, ..., x_{t-(k-1)d}`` and nothing later), ``d (k - 1) // 2`` otherwise (PyTorch's
    ``padding="same"``: the odd element of the total padding goes to the right). Either way
    the output has as many steps as the input.

    Implementation: an im2col buffer ``X (T, B, k, C_in)`` with ``X[t, :, j] = x_{t + j d - p}``
    (filled with one slice copy per tap, no loop over time), then one GEMM
    ``(T*B, k*C_in) @ (k*C_in, C_out)``. Backward is the transpose of the same two steps:

    .. math::
        \partial L/\partial W = dY^T X, \quad \partial L/\partial b = \sum_{t,b} dy_{t,b}, \quad
        dX = dY \, W, \quad dx_s = \sum_j dX_{s - j d + p,\, :,\, j}

    Shape legend: ``T`` time, ``B`` batch, ``C_in``/``C_out`` channels, ``k`` kernel size,
    ``d`` dilation.

    Parameters
    ----------
    in_channels, out_channels, kernel_size : int
    dilation : int
    bias : bool
    causal : bool
    dtype : numpy dtype
    rng : np.random.Generator, optional
        ``W, b ~ U(-1/sqrt(C_in k), 1/sqrt(C_in k))`` like PyTorch; unseeded when ``None``.

    ``weight`` is ``(C_out, C_in, k)`` and ``bias`` ``(C_out,)``: PyTorch's layout, so
    ``torch.nn.Conv1d`` applied to ``x`` permuted to ``(B, C_in, T)`` and left-padded by ``p``
    gives the same numbers.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        dilation: int = 1,
        bias: bool = True,
        causal: bool = True,
        dtype=np.float32,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        sizes = dict(in_channels=in_channels, out_channels=out_channels,
                     kernel_size=kernel_size, dilation=dilation)
        bad = {k: v for k, v in sizes.items() if int(v) < 1}
        if bad:
            raise RnnlabError(f"Conv1d needs positive sizes, got {bad}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.dilation = int(kernel_size), int(dilation)
        self.causal = bool(causal)
        total = self.dilation * (self.kernel_size - 1)
        self.pad_left = total if self.causal else total // 2
        self.has_bias = bool(bias)
        rng = rng if rng is not None else np.random.default_rng()
        fan = self.in_channels * self.kernel_size
        self.add_param(
            "weight",
            initializers.uniform_fan(rng, (self.out_channels, self.in_channels, self.kernel_size), fan, dtype),
        )
        if bias:
            self.add_param("bias", initializers.uniform_fan(rng, (self.out_channels,), fan, dtype))

    @property
    def receptive_field(self) -> int:
        """Steps of input that one output sees: ``d (k - 1) + 1``."""
        return self.dilation * (self.kernel_size - 1) + 1

    def _taps(self, T: int):
        """For each tap ``j``: ``(j, t0, t1, shift)``, the output steps ``t0 <= t < t1`` whose
        source step ``t + shift`` lies in ``[0, T)``; taps that see only padding are left out."""
        for j in range(self.kernel_size):
            shift = j * self.dilation - self.pad_left
            t0, t1 = max(0, -shift), min(T, T - shift)
            if t0 < t1:
                yield j, t0, t1, shift

    def _weight_matrix(self):
        """``W (C_out, C_in, k)`` as ``(C_out, k*C_in)``, matching the im2col column order."""
        w = self.params["weight"]
        return w.transpose(0, 2, 1).reshape(self.out_channels, -1)  # (C_out, k*C_in)

    def forward(self, x):
        """``x (T, B, C_in) -> y (T, B, C_out)``; ``cache = X (T, B, k, C_in)``."""
        if x.ndim != 3 or x.shape[2] != self.in_channels:
            raise ValueError(f"Conv1d expects (T, B, {self.in_channels}) input, got {tuple(x.shape)}")
        xp = backend.array_module(x)
        T, B, C = x.shape
        k = self.kernel_size
        cols = xp.zeros((T, B, k, C), dtype=x.dtype)  # (T, B, k, C_in): zero = the padding
        for j, t0, t1, shift in self._taps(T):
            cols[t0:t1, :, j, :] = x[t0 + shift : t1 + shift]
        y = xp.matmul(cols.reshape(T * B, k * C), self._weight_matrix().T)  # (T*B, C_out)
        if self.has_bias:
            y += self.params["bias"]
        return y.reshape(T, B, self.out_channels), cols  # (T, B, C_out)

    def backward(self, dy, cache):
        """``dy (T, B, C_out) -> dx (T, B, C_in)``; adds ``dW`` and ``db`` into ``grads``."""
        cols = cache
        xp = backend.array_module(dy)
        T, B, k, C = cols.shape
        dy2 = dy.reshape(T * B, self.out_channels)  # (T*B, C_out)
        dw = xp.matmul(dy2.T, cols.reshape(T * B, k * C))  # (C_out, k*C_in)
        self.grads["weight"] += dw.reshape(self.out_channels, k, C).transpose(0, 2, 1)  # (C_out, C_in, k)
        if self.has_bias:
            self.grads["bias"] += dy2.sum(axis=0)  # (C_out,)
        dcols = xp.matmul(dy2, self._weight_matrix()).reshape(T, B, k, C)  # (T, B, k, C_in)
        dx = xp.zeros((T, B, C), dtype=dcols.dtype)  # (T, B, C_in)
        for j, t0, t1, shift in self._taps(T):
            dx[t0 + shift : t1 + shift] += dcols[t0:t1, :, j, :]
        return dx

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"dilation={self.dilation}, causal={self.causal}, bias={self.has_bias}"
        )
