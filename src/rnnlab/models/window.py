"""Fixed-window language models: they see only the last ``K`` characters.

:class:`WindowMLP` is the neural probabilistic language model of Bengio et al. (2003)::

    c_t = [E[x_{t-K+1}], ..., E[x_t]]        (K*E,)  concatenated embeddings
    y_t = MLP(c_t)                            hidden layers with tanh, then logits (V,)

:class:`CausalCNN` stacks causal dilated 1-D convolutions (kernel ``k``, dilations 1, 2, 4, ...),
so ``y_t`` depends on the last ``R = 1 + (k-1) * sum(dilations)`` characters.

Both keep, as their "state", the last ``K-1`` (or ``R-1``) input ids of the previous chunk, so
that a window straddling a chunk boundary sees the real characters; before the start of a text
the window holds a padding id ``V`` with its own embedding row.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..nn.activations import Activation
from ..nn.conv import Conv1d
from ..nn.embedding import Embedding
from ..nn.linear import Linear
from ..nn.mlp import MLP
from .base import LanguageModel


class _WindowModel(LanguageModel):
    """Shared handling of the carried context ids ``(R-1, B)``."""

    def context_size(self) -> int:
        raise NotImplementedError

    def initial_state(self, xp, B):
        return xp.full((self.context_size() - 1, B), self.vocab_size, dtype=np.int64)

    def _with_context(self, x, state):
        """``(T, B)`` ids -> ``(T+R-1, B)`` ids with the carried context in front, and the new
        state (the last ``R-1`` ids)."""
        xp = backend.array_module(x)
        if state is None:
            state = self.initial_state(xp, x.shape[1])
        ctx = xp.concatenate([xp.asarray(state, dtype=np.int64), x.astype(np.int64)], axis=0)  # (T+R-1, B)
        r = self.context_size() - 1
        return ctx, ctx[ctx.shape[0] - r :].copy()


class WindowMLP(_WindowModel):
    """``WindowMLP(vocab_size, context=K, embed=E, hidden=H, layers=1)``."""

    kind = "mlp"

    def __init__(self, vocab_size, context=8, embed=16, hidden=256, layers=1, dropout=0.0,
                 dtype=np.float32, rng=None):
        super().__init__(vocab_size, dtype)
        rng = rng if rng is not None else np.random.default_rng()
        self.context, self.embed_dim, self.hidden = int(context), int(embed), int(hidden)
        self.layers, self.dropout = int(layers), float(dropout)
        if self.context < 1:
            raise ValueError("context must be at least 1")
        self.embed = self.add_child("embed", Embedding(vocab_size + 1, self.embed_dim, dtype=dtype, rng=rng))
        sizes = [self.context * self.embed_dim] + [self.hidden] * self.layers + [vocab_size]
        self.mlp = self.add_child("mlp", MLP(sizes, activation="tanh", dropout=self.dropout, dtype=dtype, rng=rng))

    def context_size(self) -> int:
        return self.context

    def config(self) -> dict:
        return {"model": "mlp", "vocab_size": self.vocab_size, "context": self.context, "embed": self.embed_dim,
                "hidden": self.hidden, "layers": self.layers, "dropout": self.dropout,
                "dtype": self.param_dtype.name}

    def forward(self, x, state=None, lengths=None, rng=None):
        xp = backend.array_module(x)
        T, B = x.shape
        ctx, state_n = self._with_context(x, state)
        K = self.context
        win = xp.lib.stride_tricks.sliding_window_view(ctx, K, axis=0)  # (T, B, K)
        e, ec = self.embed.forward(xp.ascontiguousarray(win))  # (T, B, K, E)
        h = e.reshape(T, B, K * self.embed_dim)  # (T, B, K*E)
        logits, mc = self.mlp.forward(h, rng=rng)  # (T, B, V)
        return logits, state_n, (ec, mc)

    def backward(self, dlogits, cache) -> None:
        ec, mc = cache
        T, B = dlogits.shape[:2]
        dh = self.mlp.backward(dlogits, mc)  # (T, B, K*E)
        self.embed.backward(dh.reshape(T, B, self.context, self.embed_dim), ec)  # (T, B, K, E)


class CausalCNN(_WindowModel):
    """``CausalCNN(vocab_size, embed=E, channels=C, layers=n, kernel=k)``; dilations 1, 2, 4, ..."""

    kind = "cnn"

    def __init__(self, vocab_size, embed=32, channels=128, layers=4, kernel=2, activation="tanh",
                 dtype=np.float32, rng=None):
        super().__init__(vocab_size, dtype)
        rng = rng if rng is not None else np.random.default_rng()
        self.embed_dim, self.channels, self.layers = int(embed), int(channels), int(layers)
        self.kernel, self.activation = int(kernel), activation
        self.embed = self.add_child("embed", Embedding(vocab_size + 1, self.embed_dim, dtype=dtype, rng=rng))
        self.convs, self.acts = [], []
        c_in = self.embed_dim
        for i in range(self.layers):
            conv = Conv1d(c_in, self.channels, self.kernel, dilation=2**i, dtype=dtype, rng=rng)
            self.convs.append(self.add_child(f"conv{i}", conv))
            self.acts.append(Activation(activation))
            c_in = self.channels
        self.out = self.add_child("out", Linear(self.channels, vocab_size, dtype=dtype, rng=rng))

    def context_size(self) -> int:
        return 1 + (self.kernel - 1) * (2**self.layers - 1)

    def config(self) -> dict:
        return {"model": "cnn", "vocab_size": self.vocab_size, "embed": self.embed_dim, "channels": self.channels,
                "layers": self.layers, "kernel": self.kernel, "activation": self.activation,
                "dtype": self.param_dtype.name}

    def forward(self, x, state=None, lengths=None, rng=None):
        T = x.shape[0]
        ctx, state_n = self._with_context(x, state)
        h, ec = self.embed.forward(ctx)  # (T+R-1, B, E)
        caches = []
        for conv, act in zip(self.convs, self.acts):
            h, cc = conv.forward(h)  # (T+R-1, B, C)
            h, ac = act.forward(h)
            caches.append((cc, ac))
        r = ctx.shape[0] - T
        logits, lc = self.out.forward(h[r:])  # (T, B, V): the first R-1 outputs are context only
        return logits, state_n, (ec, caches, lc, r)

    def backward(self, dlogits, cache) -> None:
        ec, caches, lc, r = cache
        xp = backend.array_module(dlogits)
        dtop = self.out.backward(dlogits, lc)  # (T, B, C)
        dh = xp.zeros((dtop.shape[0] + r,) + dtop.shape[1:], dtop.dtype)  # (T+R-1, B, C)
        dh[r:] = dtop
        for conv, act, (cc, ac) in reversed(list(zip(self.convs, self.acts, caches))):
            dh = act.backward(dh, ac)
            dh = conv.backward(dh, cc)
        self.embed.backward(dh, ec)
