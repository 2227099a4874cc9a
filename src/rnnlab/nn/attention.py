r"""Causal multi-head self-attention (Vaswani et al. 2017, decoder-only as in GPT), by hand.

Forward, time-major input ``x (T, B, C)``, ``nh`` heads of size ``d = C / nh``::

    [q | k | v] = x W_qkv^T + b_qkv                           (T, B, 3C), one GEMM
    q, k, v -> (B, nh, T, d)                                  split the heads
    s   = q k^T / sqrt(d)                                     (B, nh, T, T) scores
    s_ij = -inf for j > i                                     causal mask: no look-ahead
    p   = softmax(s) along j                                  attention weights
    o   = p v                                                 (B, nh, T, d)
    y   = concat_heads(o) W_o^T + b_o                         (T, B, C)

Backward (``dy`` given; products batched over ``B, nh``)::

    do = dy W_o (per head),        dW_o, db_o from the output Linear
    dp = do v^T,                   dv = p^T do
    ds = p * (dp - rowsum(dp * p)) / sqrt(d)                  softmax Jacobian; 0 where masked
    dq = ds k,                     dk = ds^T q
    dx = [dq | dk | dv] W_qkv,     dW_qkv, db_qkv from the input Linear

Parameters (children ``qkv``, ``proj``, both :class:`~rnnlab.nn.linear.Linear`):
``qkv.weight (3C, C)``, ``qkv.bias (3C,)``, ``proj.weight (C, C)``, ``proj.bias (C,)`` —
``torch.nn.MultiheadAttention``'s ``in_proj_weight``, ``in_proj_bias``, ``out_proj.weight``,
``out_proj.bias`` one to one (rows of ``W_qkv``: queries, keys, values).

Shape legend: ``T`` time, ``B`` batch, ``C`` width, ``nh`` heads, ``d`` head size.
Memory: the weights ``p`` are kept for backward, ``B * nh * T^2`` numbers per layer.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..errors import RnnlabError
from .linear import Linear
from .module import Module


def causal_softmax(s):
    """Softmax of scores ``s (..., T, T)`` along the last axis with ``s_ij`` for ``j > i``
    excluded (weight 0), in place; returns ``s``. Row ``i`` always keeps ``j = i``, so no row is
    empty."""
    xp = backend.array_module(s)
    T = s.shape[-1]
    future = xp.triu(xp.ones((T, T), dtype=bool), k=1)  # (T, T): True where j > i
    s[..., future] = -np.inf
    s -= s.max(axis=-1, keepdims=True)
    xp.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return s


def softmax_backward(p, dp):
    """``ds = p * (dp - sum_j dp * p)`` for ``p = softmax(s)`` along the last axis (masked
    entries have ``p = 0`` and get ``ds = 0``); ``dp`` is overwritten and returned."""
    dot = (dp * p).sum(axis=-1, keepdims=True)
    dp -= dot
    dp *= p
    return dp


class CausalSelfAttention(Module):
    """``CausalSelfAttention(C, heads)``: ``forward(x (T, B, C)) -> (y (T, B, C), cache)``,
    ``backward(dy, cache) -> dx``. See the module docstring.

    Parameters
    ----------
    embed_dim : int
        ``C``; must be a multiple of ``heads``.
    heads : int
    dtype : numpy dtype
    rng : np.random.Generator, optional
        Initialisation: PyTorch's Linear default unless ``std`` is given (weights ``N(0,
        std^2)``, zero biases, as GPT-2 initialises); ``proj_std`` for the output projection.
    """

    def __init__(self, embed_dim: int, heads: int, dtype=np.float32, rng: np.random.Generator | None = None,
                 std: float | None = None, proj_std: float | None = None) -> None:
        super().__init__()
        embed_dim, heads = int(embed_dim), int(heads)
        if embed_dim < 1 or heads < 1 or embed_dim % heads:
            raise RnnlabError(f"attention width {embed_dim} must be a positive multiple of the number of heads "
                              f"{heads}: change --hidden or --heads")
        self.C, self.heads, self.head_dim = embed_dim, heads, embed_dim // heads
        rng = rng if rng is not None else np.random.default_rng()
        self.qkv = self.add_child("qkv", Linear(embed_dim, 3 * embed_dim, dtype=dtype, rng=rng))
        self.proj = self.add_child("proj", Linear(embed_dim, embed_dim, dtype=dtype, rng=rng))
        if std is not None:
            for lin, sd in ((self.qkv, std), (self.proj, std if proj_std is None else proj_std)):
                lin.weight[...] = backend.asarray((rng.standard_normal(lin.weight.shape) * sd).astype(dtype))
                lin.bias[...] = 0

    def forward(self, x):
        T, B, C = x.shape
        nh, d = self.heads, self.head_dim
        qkv, c_in = self.qkv.forward(x)  # (T, B, 3C)
        heads = qkv.reshape(T, B, 3, nh, d).transpose(2, 1, 3, 0, 4)  # (3, B, nh, T, d) view
        q, k, v = heads[0], heads[1], heads[2]
        s = q @ k.transpose(0, 1, 3, 2)  # (B, nh, T, T)
        s *= s.dtype.type(1.0 / math.sqrt(d))
        p = causal_softmax(s)
        o = p @ v  # (B, nh, T, d)
        o = o.transpose(2, 0, 1, 3).reshape(T, B, C)  # (T, B, C), heads concatenated
        y, c_out = self.proj.forward(o)
        return y, (c_in, q, k, v, p, c_out)

    def backward(self, dy, cache):
        c_in, q, k, v, p, c_out = cache
        xp = backend.array_module(dy)
        T, B, C = dy.shape
        nh, d = self.heads, self.head_dim
        do = self.proj.backward(dy, c_out)  # (T, B, C)
        do = do.reshape(T, B, nh, d).transpose(1, 2, 0, 3)  # (B, nh, T, d) view
        dqkv = xp.empty((3, B, nh, T, d), dy.dtype)  # assembled per head, reshaped below
        xp.matmul(p.transpose(0, 1, 3, 2), do, out=dqkv[2])  # dv = p^T do
        ds = softmax_backward(p, do @ v.transpose(0, 1, 3, 2))  # (B, nh, T, T)
        ds *= ds.dtype.type(1.0 / math.sqrt(d))
        xp.matmul(ds, k, out=dqkv[0])  # dq = ds k
        xp.matmul(ds.transpose(0, 1, 3, 2), q, out=dqkv[1])  # dk = ds^T q
        dqkv = dqkv.transpose(3, 1, 0, 2, 4).reshape(T, B, 3 * C)  # (T, B, 3C)
        return self.qkv.backward(dqkv, c_in)

    def extra_repr(self) -> str:
        return f"{self.C}, heads={self.heads}"
