"""Language models for the char-LM trainer: recurrent (rnn, lstm, gru, and the minimal
mingru, minlstm), the traditional baselines (mlp, cnn, bigram), the bag-of-words model and the
Transformer, all behind one interface (see :mod:`rnnlab.models.base`)."""
from __future__ import annotations

import numpy as np

from .base import LanguageModel
from .bigram import Bigram
from .bow import BoWLM
from .recurrent_lm import RecurrentLM
from .transformer import TransformerLM
from .window import CausalCNN, WindowMLP

MODEL_KINDS = ("rnn", "lstm", "gru", "mingru", "minlstm", "mlp", "cnn", "bigram", "bow", "transformer")


def build_model(config: dict, rng: np.random.Generator | None = None) -> LanguageModel:
    """A model from ``config`` (what ``model.config()`` returned): ``config["model"]`` names the kind."""
    cfg = dict(config)
    kind = cfg.pop("model")
    dtype = np.dtype(cfg.pop("dtype", "float32"))
    if kind in ("rnn", "lstm", "gru", "mingru", "minlstm"):
        return RecurrentLM(cell=kind, dtype=dtype, rng=rng, **cfg)
    if kind == "mlp":
        return WindowMLP(dtype=dtype, rng=rng, **cfg)
    if kind == "cnn":
        return CausalCNN(dtype=dtype, rng=rng, **cfg)
    if kind == "bigram":
        return Bigram(dtype=dtype, rng=rng, **cfg)
    if kind == "bow":
        return BoWLM(dtype=dtype, rng=rng, **cfg)
    if kind == "transformer":
        return TransformerLM(dtype=dtype, rng=rng, **cfg)
    raise ValueError(f"unknown model kind {kind!r}: choose from {', '.join(MODEL_KINDS)}")


__all__ = ["LanguageModel", "RecurrentLM", "WindowMLP", "CausalCNN", "Bigram", "BoWLM", "TransformerLM",
           "build_model", "MODEL_KINDS"]
