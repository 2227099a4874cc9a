"""The decoder-only Transformer language model (GPT-2's layout, as in nanoGPT and makemore).

::

    e_n = W_te[x_n] + W_pe[n]                 token + learned position embedding, n < K
    e   = drop(e)
    e   = block_L( ... block_1(e))            pre-LN blocks: causal attention + GELU MLP
    y_n = W_head LN_f(e_n)                    logits (no bias)

Shapes: ``x (T, B)`` ids, ``e (T, B, C)``, ``y (T, B, V)``; ``K`` the block (position table).
Parameters: ``wte.weight (V, C)``, ``wpe (K, C)``, ``h{i}.*`` per block
(:class:`~rnnlab.nn.transformer.TransformerBlock`), ``ln_f.*``, ``head.weight (V, C)``.
Initialisation as GPT-2 (``N(0, 0.02^2)``, scaled residual projections); weight decay, when
asked for, applies to the matrices only. The windowing over the block, cropping at generation
time and the (absent) state between training chunks are :mod:`rnnlab.models.block`'s.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..errors import RnnlabError
from ..nn.embedding import Embedding
from ..nn.layernorm import LayerNorm
from ..nn.linear import Linear
from ..nn.transformer import INIT_STD, TransformerBlock, dropout_mask, normal_
from .block import BlockLM


class TransformerLM(BlockLM):
    """``TransformerLM(vocab_size, hidden=C, layers=L, heads=nh, block=K, dropout=p)``."""

    kind = "transformer"

    def __init__(self, vocab_size, hidden=128, layers=4, heads=4, block=128, dropout=0.0, dtype=np.float32,
                 rng=None):
        super().__init__(vocab_size, block, dtype)
        rng = rng if rng is not None else np.random.default_rng()
        self.width, self.layers, self.heads = int(hidden), int(layers), int(heads)
        self.dropout = float(dropout)
        if self.heads < 1 or self.width % self.heads:
            raise RnnlabError(f"the transformer's width --hidden {self.width} must be a multiple of --heads "
                              f"{self.heads}: change one of them")
        C = self.width
        self.wte = self.add_child("wte", Embedding(vocab_size, C, dtype=dtype, rng=rng))
        normal_(self.wte.weight, rng, INIT_STD)
        self.add_param("wpe", (rng.standard_normal((self.block, C)) * INIT_STD).astype(dtype))
        self.blocks = [self.add_child(f"h{i}", TransformerBlock(C, self.heads, self.dropout, self.layers,
                                                                dtype=dtype, rng=rng))
                       for i in range(self.layers)]
        self.ln_f = self.add_child("ln_f", LayerNorm(C, dtype=dtype))
        self.head = self.add_child("head", Linear(C, vocab_size, bias=False, dtype=dtype, rng=rng))
        normal_(self.head.weight, rng, INIT_STD)

    def config(self) -> dict:
        return {"model": "transformer", "vocab_size": self.vocab_size, "hidden": self.width, "layers": self.layers,
                "heads": self.heads, "block": self.block, "dropout": self.dropout, "dtype": self.param_dtype.name}

    def _core(self, ids, rng):
        xp = backend.array_module(ids)
        L = ids.shape[0]
        e, c_te = self.wte.forward(ids)  # (L, B, C)
        e = self._add_positions(e, L)
        mask = dropout_mask(xp, e.shape, self.dropout if self.training else 0.0, e.dtype, rng)
        if mask is not None:
            e *= mask
        caches = []
        for blk in self.blocks:
            e, c = blk.forward(e, rng=rng)
            caches.append(c)
        e, c_ln = self.ln_f.forward(e)
        logits, c_head = self.head.forward(e)  # (L, B, V)
        return logits, (c_te, mask, caches, c_ln, c_head, L)

    def _core_backward(self, dlogits, cache) -> None:
        c_te, mask, caches, c_ln, c_head, L = cache
        d = self.head.backward(dlogits, c_head)  # (L, B, C)
        d = self.ln_f.backward(d, c_ln)
        for blk, c in zip(reversed(self.blocks), reversed(caches)):
            d = blk.backward(d, c)
        if mask is not None:
            d *= mask
        self.grads["wpe"][:L] += d.sum(axis=1)  # (L, C)
        self.wte.backward(d, c_te)
