"""The causal bag-of-words language model (makemore's ``BoW``): the rung between the fixed
window and attention — every position averages all the positions before it, with equal weights.

::

    e_n = W_te[x_n] + W_pe[n]                       token + position embedding (C), n < K
    m_n = (1 / (n + 1)) sum_{s <= n} e_s            causal average ("attention" with uniform weights)
    u_n = e_n + m_n
    v_n = u_n + W_2 tanh(W_1 u_n + b_1) + b_2       MLP with residual, hidden width C2
    y_n = W_head v_n + b_head                       logits

Backward of the average: ``de_s += sum_{n >= s} dm_n / (n + 1)``, a reverse cumulative sum.

Shapes: ``x (T, B)``, ``e, m, u, v (T, B, C)``, ``y (T, B, V)``. Parameters ``wte.weight (V, C)``,
``wpe (K, C)``, ``fc.* (C2, C)``, ``proj.* (C, C2)``, ``head.* (V, C)``; PyTorch's default
initialisation, as makemore.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..nn.embedding import Embedding
from ..nn.linear import Linear
from .block import BlockLM


class BoWLM(BlockLM):
    """``BoWLM(vocab_size, embed=C, hidden=C2, block=K)``."""

    kind = "bow"

    def __init__(self, vocab_size, embed=64, hidden=256, block=32, dtype=np.float32, rng=None):
        super().__init__(vocab_size, block, dtype)
        rng = rng if rng is not None else np.random.default_rng()
        self.embed_dim, self.hidden = int(embed), int(hidden)
        C = self.embed_dim
        self.wte = self.add_child("wte", Embedding(vocab_size, C, dtype=dtype, rng=rng))
        self.add_param("wpe", rng.standard_normal((self.block, C)).astype(dtype))
        self.fc = self.add_child("fc", Linear(C, self.hidden, dtype=dtype, rng=rng))
        self.proj = self.add_child("proj", Linear(self.hidden, C, dtype=dtype, rng=rng))
        self.head = self.add_child("head", Linear(C, vocab_size, dtype=dtype, rng=rng))

    def config(self) -> dict:
        return {"model": "bow", "vocab_size": self.vocab_size, "embed": self.embed_dim, "hidden": self.hidden,
                "block": self.block, "dtype": self.param_dtype.name}

    def _core(self, ids, rng):
        xp = backend.array_module(ids)
        L = ids.shape[0]
        e, c_te = self.wte.forward(ids)  # (L, B, C)
        e = self._add_positions(e, L)
        inv = (1.0 / xp.arange(1, L + 1, dtype=e.dtype))[:, None, None]  # (L, 1, 1): 1 / (n + 1)
        u = xp.cumsum(e, axis=0)  # (L, B, C)
        u *= inv
        u += e  # e_n + m_n
        h, c_fc = self.fc.forward(u)  # (L, B, C2)
        xp.tanh(h, out=h)
        v, c_proj = self.proj.forward(h)  # (L, B, C)
        v += u
        logits, c_head = self.head.forward(v)  # (L, B, V)
        return logits, (c_te, inv, h, c_fc, c_proj, c_head, L)

    def _core_backward(self, dlogits, cache) -> None:
        c_te, inv, h, c_fc, c_proj, c_head, L = cache
        xp = backend.array_module(dlogits)
        dv = self.head.backward(dlogits, c_head)  # (L, B, C)
        dh = self.proj.backward(dv, c_proj)  # (L, B, C2)
        dh *= 1 - h * h
        du = self.fc.backward(dh, c_fc)  # (L, B, C)
        du += dv
        dm = du * inv  # dL/dm_n / (n + 1)
        de = xp.cumsum(dm[::-1], axis=0)[::-1]  # sum_{n >= s}
        de += du
        self.grads["wpe"][:L] += de.sum(axis=1)  # (L, C)
        self.wte.backward(de, c_te)
