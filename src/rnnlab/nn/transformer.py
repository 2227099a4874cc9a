r"""The decoder-only Transformer block (GPT-2's pre-LayerNorm layout), forward and backward.

::

    a  = x + drop(Attn(LN_1(x)))                     causal multi-head self-attention
    y  = a + drop(W_2 gelu(W_1 LN_2(a) + b_1) + b_2) MLP, hidden width 4C

Backward follows the two residual branches: ``da = dy + d(MLP branch)``, ``dx = da + d(attention
branch)``; each piece (:class:`~rnnlab.nn.layernorm.LayerNorm`,
:class:`~rnnlab.nn.attention.CausalSelfAttention`, :class:`~rnnlab.nn.linear.Linear`,
:class:`~rnnlab.nn.gelu.GELU`) has its own hand-written backward. Dropout (inverted, rate
``p``) acts on each branch's output before it is added to the residual stream.

Shape legend: ``x, y (T, B, C)``; parameters ``ln1.*``, ``attn.qkv.*``, ``attn.proj.*``,
``ln2.*``, ``fc.*`` (``(4C, C)``), ``proj.*`` (``(C, 4C)``).

Initialisation as GPT-2: every weight ``N(0, 0.02^2)``, biases 0, and the two projections that
write into the residual stream (``attn.proj``, ``proj``) ``N(0, (0.02 / sqrt(2 L))^2)`` for a
stack of ``L`` blocks, so the stream's variance does not grow with depth.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from .attention import CausalSelfAttention
from .gelu import GELU
from .layernorm import LayerNorm
from .linear import Linear
from .module import Module

INIT_STD = 0.02


def dropout_mask(xp, shape, rate: float, dtype, rng):
    """An inverted-dropout mask ``1[u >= rate] / (1 - rate)``, ``u ~ U[0, 1)`` drawn from ``rng``
    (None when ``rate`` is 0)."""
    if rate <= 0:
        return None
    if rng is None:
        raise ValueError("dropout is active: pass rng=np.random.Generator to forward")
    keep = 1.0 - rate
    return xp.asarray(rng.random(shape) < keep).astype(dtype) / np.dtype(dtype).type(keep)


def normal_(param, rng, std):
    """Fill ``param`` in place with ``N(0, std^2)`` values drawn from ``rng``."""
    param[...] = backend.asarray((rng.standard_normal(param.shape) * std).astype(param.dtype))


class TransformerBlock(Module):
    """``TransformerBlock(C, heads, dropout=0.0, n_layers=1)``: ``forward(x (T, B, C), rng=None)
    -> (y, cache)``, ``backward(dy, cache) -> dx``; ``rng`` draws the dropout masks."""

    def __init__(self, embed_dim: int, heads: int, dropout: float = 0.0, n_layers: int = 1,
                 dtype=np.float32, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        rng = rng if rng is not None else np.random.default_rng()
        C = int(embed_dim)
        self.C, self.dropout = C, float(dropout)
        resid_std = INIT_STD / math.sqrt(2 * max(1, int(n_layers)))
        self.ln1 = self.add_child("ln1", LayerNorm(C, dtype=dtype))
        self.attn = self.add_child("attn", CausalSelfAttention(C, heads, dtype=dtype, rng=rng, std=INIT_STD,
                                                               proj_std=resid_std))
        self.ln2 = self.add_child("ln2", LayerNorm(C, dtype=dtype))
        self.fc = self.add_child("fc", Linear(C, 4 * C, dtype=dtype, rng=rng))
        self.proj = self.add_child("proj", Linear(4 * C, C, dtype=dtype, rng=rng))
        self.act = GELU()
        for lin, std in ((self.fc, INIT_STD), (self.proj, resid_std)):
            normal_(lin.weight, rng, std)
            lin.bias[...] = 0

    def _drop(self, xp, h, rng):
        """Inverted dropout of ``h`` in place; returns the mask (None when inactive)."""
        mask = dropout_mask(xp, h.shape, self.dropout if self.training else 0.0, h.dtype, rng)
        if mask is not None:
            h *= mask
        return mask

    def forward(self, x, rng: np.random.Generator | None = None):
        xp = backend.array_module(x)
        h, c_ln1 = self.ln1.forward(x)
        h, c_attn = self.attn.forward(h)  # (T, B, C)
        m_attn = self._drop(xp, h, rng)
        a = x + h  # the residual stream after attention
        h, c_ln2 = self.ln2.forward(a)
        h, c_fc = self.fc.forward(h)  # (T, B, 4C)
        h, c_act = self.act.forward(h)
        h, c_proj = self.proj.forward(h)  # (T, B, C)
        m_mlp = self._drop(xp, h, rng)
        h += a
        return h, (c_ln1, c_attn, m_attn, c_ln2, c_fc, c_act, c_proj, m_mlp)

    def backward(self, dy, cache):
        c_ln1, c_attn, m_attn, c_ln2, c_fc, c_act, c_proj, m_mlp = cache
        d = dy if m_mlp is None else dy * m_mlp
        d = self.proj.backward(d, c_proj)  # (T, B, 4C)
        d = self.act.backward(d, c_act)
        d = self.fc.backward(d, c_fc)  # (T, B, C)
        da = self.ln2.backward(d, c_ln2)
        da += dy  # (T, B, C): the residual path
        d = da if m_attn is None else da * m_attn
        d = self.attn.backward(d, c_attn)
        dx = self.ln1.backward(d, c_ln1)
        dx += da
        return dx

    def extra_repr(self) -> str:
        return f"{self.C}, heads={self.attn.heads}, dropout={self.dropout}"
