"""Language models that see a bounded block of the last ``K`` characters through a learned
position table: the Transformer and the bag-of-words model.

A subclass supplies ``_core(ids (N, B), rng) -> (logits (N, B, V), cache)`` for ``N <= K``,
where position ``n`` of ``ids`` uses row ``n`` of the position table, and its backward. This
class turns that into the :class:`~rnnlab.models.base.LanguageModel` interface with nanoGPT's
cropping rule: the prediction after character ``t`` sees the last ``min(K, t + 1)`` characters,
positions counted from the first of them::

    ctx = [state ; x]            the carried ids (at most K - 1) in front of the new ones
    logits_t = core(ctx[max(0, t-K+1) : t+1])[-1]        for every position t of x

Positions below ``K`` come from one pass over ``ctx[:K]``; each later position needs a window
of its own, ``ctx[t-K+1 : t+1]``, and those windows run as one batch. The state after a call
is the last ``K - 1`` ids, so generating one character at a time costs one pass over at most
``K`` positions and never exceeds the table (``rnnlab sample`` crops to the last block).

Training and evaluation do not carry state between chunks (``carries_state = False``): each
chunk of ``--seq-len`` characters (the block, ``K``) is one window, as nanoGPT trains, and a
position sees the characters of its chunk up to itself. Carrying the state would make every
chunk need ``T`` windows of its own. ``lengths`` is not needed: attention is causal, so a real
position never sees the padding after it.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from .base import LanguageModel


class BlockLM(LanguageModel):
    """Base class: ``block`` = ``K``, the size of the position table."""

    carries_state = False
    split_rows = True  # the batch's rows run on one thread per core (lm/shards.py)

    def __init__(self, vocab_size: int, block: int, dtype=np.float32) -> None:
        super().__init__(vocab_size, dtype)
        if int(block) < 1:
            raise ValueError(f"block must be at least 1, got {block}")
        self.block = int(block)

    def no_decay(self) -> set:
        """Weight decay applies to matrices only (embeddings, position table, linear weights),
        not to biases and LayerNorm gains."""
        return {k for k, v in self.params.items() if v.ndim < 2}

    def _core(self, ids, rng):
        raise NotImplementedError

    def _core_backward(self, dlogits, cache) -> None:
        raise NotImplementedError

    def forward(self, x, state=None, lengths=None, rng=None):
        xp = backend.array_module(x)
        K = self.block
        x = xp.asarray(x).astype(np.int64, copy=False)
        T, B = x.shape
        if state is not None and state.shape[0]:
            state = xp.asarray(state, dtype=np.int64)[-(K - 1) :] if K > 1 else state[:0]
            ctx = xp.concatenate([state, x], axis=0)  # (C + T, B)
        else:
            ctx = x
        c = ctx.shape[0] - T  # carried positions in front of x
        N = ctx.shape[0]
        first = min(N, K)
        logits1, cache1 = self._core(ctx[:first], rng)  # (first, B, V)
        parts = [logits1[c:]]
        cache2, W = None, 0
        if N > K:  # positions K..N-1 each need their own window of the last K ids
            W = N - K
            win = xp.lib.stride_tricks.sliding_window_view(ctx, K, axis=0)[1:]  # (W, B, K): ends at K..N-1
            ids = xp.ascontiguousarray(win.transpose(2, 0, 1)).reshape(K, W * B)  # (K, W*B)
            logits2, cache2 = self._core(ids, rng)  # (K, W*B, V)
            parts.append(logits2[-1].reshape(W, B, -1))  # (W, B, V)
        logits = parts[0] if len(parts) == 1 else xp.concatenate(parts, axis=0)  # (T, B, V)
        state_n = ctx[max(0, N - (K - 1)) :].copy() if K > 1 else ctx[:0].copy()
        return logits, state_n, (cache1, c, first, cache2, W)

    def backward(self, dlogits, cache) -> None:
        cache1, c, first, cache2, W = cache
        xp = backend.array_module(dlogits)
        B, V = dlogits.shape[1], dlogits.shape[2]
        if c == 0 and first == dlogits.shape[0]:
            d1 = dlogits
        else:
            d1 = xp.zeros((first, B, V), dlogits.dtype)
            d1[c:] = dlogits[: first - c]
        self._core_backward(d1, cache1)
        if cache2 is not None:
            d2 = xp.zeros((self.block, W * B, V), dlogits.dtype)
            d2[-1] = dlogits[first - c :].reshape(W * B, V)
            self._core_backward(d2, cache2)

    def _add_positions(self, e, L):
        """``e (L, B, C) + wpe[:L]`` in place."""
        e += self.params["wpe"][:L, None, :]
        return e

