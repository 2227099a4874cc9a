"""The PyTorch twin of :class:`rnnlab.models.RecurrentLM`: a plain ``torch.nn.Module``.

::

    e_t = embed(x_t)                      nn.Embedding(V, E), or the one-hot vector when embed = 0
    h_t = rnn(e_t, h_{t-1})               nn.RNN | nn.LSTM | nn.GRU, layers stacked, dropout between
    y_t = out(dropout(h_t))               nn.Linear(H, V): logits

Shapes (time-major, like rnnlab): ``ids (T, B)`` int64 -> ``logits (T, B, V)``; the state is
``h (L, B, H)``, the LSTM's ``(h, c)``. The parameter names (``embed.weight``, ``rnn.weight_ih_l0``
..., ``out.weight``, ``out.bias``) are what :mod:`rnnlab.interop.torch` reads and writes.

This module imports torch at the top: only :mod:`rnnlab.interop.torch` imports it, on first use.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class TorchCharLM(nn.Module):
    """``TorchCharLM(vocab_size, cell="lstm", hidden=256, layers=2, embed=64, dropout=0.0,
    nonlinearity="tanh", dtype="float32")``: the same arguments as ``RecurrentLM``, so
    ``TorchCharLM(**config)`` builds the twin of a model with ``model.config() == config``
    (``config["model"]`` names the cell)."""

    def __init__(self, vocab_size, cell="lstm", hidden=256, layers=2, embed=64, dropout=0.0, nonlinearity="tanh",
                 dtype="float32", model=None):
        super().__init__()
        cell = model or cell
        if cell not in _CELLS:
            raise ValueError(f"cell must be one of {sorted(_CELLS)}, got {cell!r}")
        self.cell, self.vocab_size, self.hidden, self.layers = cell, int(vocab_size), int(hidden), int(layers)
        self.embed_dim, self.dropout_p, self.nonlinearity = int(embed), float(dropout), nonlinearity
        dt = _DTYPES[str(dtype).replace("torch.", "")]
        self.embed = nn.Embedding(vocab_size, embed, dtype=dt) if embed > 0 else None
        kw = dict(num_layers=self.layers, dropout=self.dropout_p if self.layers > 1 else 0.0, dtype=dt)
        if cell == "rnn":
            kw["nonlinearity"] = nonlinearity
        self.rnn = _CELLS[cell](embed if embed > 0 else vocab_size, hidden, **kw)
        self.drop = nn.Dropout(self.dropout_p)
        self.out = nn.Linear(hidden, vocab_size, dtype=dt)

    def config(self) -> dict:
        """The JSON-able arguments, in the form of ``RecurrentLM.config()``."""
        return {"model": self.cell, "vocab_size": self.vocab_size, "hidden": self.hidden, "layers": self.layers,
                "embed": self.embed_dim, "dropout": self.dropout_p, "nonlinearity": self.nonlinearity,
                "dtype": str(self.out.weight.dtype).replace("torch.", "")}

    def forward(self, ids, state=None):
        """``ids (T, B)`` int64 -> ``(logits (T, B, V), state_n)``."""
        if self.embed is not None:
            x = self.embed(ids)  # (T, B, E)
        else:
            x = F.one_hot(ids, self.vocab_size).to(self.out.weight.dtype)  # (T, B, V)
        h, state_n = self.rnn(x, state)  # (T, B, H)
        return self.out(self.drop(h)), state_n  # (T, B, V)
