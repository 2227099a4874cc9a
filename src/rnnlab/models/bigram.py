"""The bigram model: a table of next-character logits indexed by the current character.

::

    y_t = W[x_t]          W (V, V); fitted in closed form from counts,
                          W[a, b] = log((N[a, b] + alpha) / sum_b' (N[a, b'] + alpha))

``prefit`` sets ``W`` from the training pairs (add-``alpha`` smoothing), which is the maximum-
likelihood estimate; gradient steps through the common trainer then change it little. It has
no context beyond one character: the floor every other model must beat.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..nn.embedding import scatter_add_rows
from .base import LanguageModel


class Bigram(LanguageModel):
    """``Bigram(vocab_size, alpha=1.0)``; parameter ``W (V, V)``."""

    kind = "bigram"

    def __init__(self, vocab_size, alpha=1.0, dtype=np.float32, rng=None):
        super().__init__(vocab_size, dtype)
        self.alpha = float(alpha)
        self.add_param("W", np.zeros((vocab_size, vocab_size), dtype))

    def config(self) -> dict:
        return {"model": "bigram", "vocab_size": self.vocab_size, "alpha": self.alpha,
                "dtype": self.param_dtype.name}

    def prefit(self, pairs) -> None:
        V = self.vocab_size
        counts = np.zeros((V, V), np.float64)
        for x, y in pairs:
            x, y = backend.to_numpy(x).reshape(-1), backend.to_numpy(y).reshape(-1)
            ok = y >= 0
            np.add.at(counts, (x[ok].astype(np.int64), y[ok].astype(np.int64)), 1.0)
        counts += self.alpha
        w = np.log(counts / counts.sum(axis=1, keepdims=True))
        self.params["W"][...] = backend.asarray(w.astype(self.param_dtype))

    def forward(self, x, state=None, lengths=None, rng=None):
        xp = backend.array_module(x)
        return xp.take(self.params["W"], x, axis=0), None, x  # (T, B, V)

    def backward(self, dlogits, cache) -> None:
        x = cache
        scatter_add_rows(self.grads["W"], x.reshape(-1), dlogits.reshape(-1, self.vocab_size))
