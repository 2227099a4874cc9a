"""Character-level recurrent language model: embedding -> RNN | LSTM | GRU | minGRU | minLSTM ->
linear read-out.

::

    e_t = E[x_t]                          (or the one-hot vector of x_t when embed = 0)
    h_t = cell(e_t, h_{t-1})              num_layers stacked, dropout between layers
    y_t = W_hy h_t + b_y                  logits over the vocabulary

Shapes: ``x (T, B)`` ids, ``e (T, B, E)``, ``h (T, B, H)``, ``y (T, B, V)``.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..nn.embedding import Embedding
from ..nn.linear import Linear
from ..nn.minrnn import MinGRU, MinLSTM
from ..nn.recurrent import GRU, LSTM, RNN
from .base import LanguageModel

CELLS = {"rnn": RNN, "lstm": LSTM, "gru": GRU, "mingru": MinGRU, "minlstm": MinLSTM}


class RecurrentLM(LanguageModel):
    """``RecurrentLM(vocab_size, cell="lstm", hidden=256, layers=2, embed=64, dropout=0.0)``."""

    def __init__(self, vocab_size, cell="lstm", hidden=256, layers=2, embed=64, dropout=0.0,
                 nonlinearity="tanh", dtype=np.float32, rng=None):
        super().__init__(vocab_size, dtype)
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}")
        rng = rng if rng is not None else np.random.default_rng()
        self.kind, self.cell, self.hidden, self.layers = cell, cell, int(hidden), int(layers)
        self.embed_dim, self.dropout, self.nonlinearity = int(embed), float(dropout), nonlinearity
        if self.embed_dim > 0:
            self.embed = self.add_child("embed", Embedding(vocab_size, self.embed_dim, dtype=dtype, rng=rng))
            in_size = self.embed_dim
        else:  # one-hot input, as in min-char-rnn
            self.embed = None
            in_size = vocab_size
        kw = dict(num_layers=self.layers, dropout=self.dropout, dtype=dtype, rng=rng)
        if cell == "rnn":
            kw["nonlinearity"] = nonlinearity
        self.rnn = self.add_child("rnn", CELLS[cell](in_size, self.hidden, **kw))
        self.out = self.add_child("out", Linear(self.hidden, vocab_size, dtype=dtype, rng=rng,
                                                name_w="W_hy", name_b="b_y"))

    @property
    def split_rows(self) -> bool:
        """minGRU/minLSTM: one shard per core (their compiled scans run on one core each)."""
        return self.cell in ("mingru", "minlstm")

    def config(self) -> dict:
        return {"model": self.cell, "vocab_size": self.vocab_size, "hidden": self.hidden,
                "layers": self.layers, "embed": self.embed_dim, "dropout": self.dropout,
                "nonlinearity": self.nonlinearity, "dtype": self.param_dtype.name}

    def initial_state(self, xp, batch: int):
        h = xp.zeros((self.layers, batch, self.hidden), self.param_dtype)
        return (h, xp.zeros_like(h)) if self.cell == "lstm" else h

    def forward(self, x, state=None, lengths=None, rng=None):
        xp = backend.array_module(x)
        # The lookup (E[x] or the one-hot vector) is fused into the first recurrent layer: its
        # input GEMMs then run over the V vocabulary rows instead of the T*B steps.
        table = self.embed.weight if self.embed is not None else "onehot"
        h, state_n, rc = self.rnn.forward(x, state, lengths=lengths, rng=rng, embedding=table)  # (T, B, H)
        drop = None
        if self.training and self.dropout > 0:
            if rng is None:
                raise ValueError("dropout is active: pass rng=np.random.Generator to forward")
            keep = 1.0 - self.dropout
            drop = xp.asarray(rng.random(h.shape) < keep).astype(self.param_dtype) / keep
            h = h * drop
        logits, lc = self.out.forward(h)  # (T, B, V)
        return logits, state_n, (rc, drop, lc)

    def backward(self, dlogits, cache) -> None:
        rc, drop, lc = cache
        dh = self.out.backward(dlogits, lc)  # (T, B, H)
        if drop is not None:
            dh *= drop
        dtable, _ = self.rnn.backward(dh, None, rc)  # (V, E): dL/dE; None for one-hot input
        if self.embed is not None:
            self.embed.grads["weight"] += dtable
