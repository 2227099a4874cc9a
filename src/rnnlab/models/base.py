"""The interface every language model offers the trainer, the sampler and the evaluator.

A model maps token ids ``x (T, B)`` to next-token logits ``(T, B, V)``::

    logits, state_n, cache = model.forward(x, state=None, lengths=None, rng=None)
    model.backward(dlogits, cache)          # adds into model.grads

``state`` is what the model carries from one chunk of a stream to the next: the recurrent
models' hidden state, the window models' last few input tokens (so a window that straddles a
chunk boundary sees the real previous characters), nothing for the bigram. ``None`` means the
start of a text. ``model.config()`` returns the JSON-able keyword arguments that rebuild the
model with :func:`rnnlab.models.build_model`.
"""
from __future__ import annotations

import numpy as np

from ..nn.module import Module


class LanguageModel(Module):
    """Base class: ids ``(T, B)`` -> logits ``(T, B, V)``."""

    kind = "base"
    carries_state = True
    """Whether the trainer and the evaluator carry ``state_n`` into the next chunk of a stream
    (False for the block models, which train and score each chunk on its own)."""

    def __init__(self, vocab_size: int, dtype=np.float32) -> None:
        super().__init__()
        self.vocab_size = int(vocab_size)
        self.param_dtype = np.dtype(dtype)

    def config(self) -> dict:
        raise NotImplementedError

    def initial_state(self, xp, batch: int):
        """The state at the start of a text for ``batch`` sequences (None: nothing carried)."""
        return None

    def no_decay(self) -> set:
        """Names of the parameters that weight decay leaves alone (none by default)."""
        return set()

    def prefit(self, pairs) -> None:
        """Optional closed-form fit from ``(x, y)`` id batches before gradient training."""

    def forward(self, x, state=None, lengths=None, rng=None):
        raise NotImplementedError

    def backward(self, dlogits, cache) -> None:
        raise NotImplementedError
