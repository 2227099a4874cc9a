"""Generating text one character at a time, in constant memory.

At each step the model's logits ``z (V,)`` for the next character become probabilities::

    p_i = exp(z_i / T) / sum_j exp(z_j / T)          temperature T > 0
    T = 0: the argmax (greedy decoding)
    top-k: all but the k largest z_i are dropped before the softmax
    top-p: only the nucleus is kept, the fewest likeliest characters whose probabilities
           (after temperature and top-k) add up to at least p; then renormalised
           (Holtzman et al. 2020)

The state after the priming text is carried forward; each new character is fed back in. A block
model (the Transformer, the bag-of-words model) sees at most its block of ``K`` characters: its
state is the last ``K - 1`` of them, so past the block generation crops to the last ``K``, as
nanoGPT does (and a longer priming text is cut to its last ``K`` characters).
Characters are handed to a callback as they are produced, so nothing but the model's state is
kept, however long the sample.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .. import backend
from ..errors import RnnlabError


def choose(logits: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator,
           top_p: float = 1.0) -> int:
    """One id drawn from host ``logits (V,)`` (float64 arithmetic for a stable softmax)."""
    z = np.asarray(logits, np.float64)
    if not np.isfinite(z).all():
        raise RnnlabError("the model produced NaN/Inf scores (its training diverged): sample from the other "
                          "checkpoint (--checkpoint best|last) or retrain with a lower --lr and --clip 1")
    if temperature == 0:
        return int(np.argmax(z))
    z = z / temperature
    if 0 < top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z >= kth, z, -np.inf)
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")  # likeliest first; ties keep the lower id first
        keep = int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1  # the nucleus: first to reach top_p
        nucleus = np.zeros_like(p)
        nucleus[order[:keep]] = p[order[:keep]]
        p = nucleus / nucleus.sum()
    return int(rng.choice(z.size, p=p))


def generate(model, vocab, *, prime: str = "", length: int = 500, temperature: float = 1.0, top_k: int = 0,
             rng: np.random.Generator, lines: bool = False, emit: Callable[[str], None],
             top_p: float = 1.0) -> str | None:
    """Generate one sample, calling ``emit(text)`` as characters appear.

    Stream mode: continue ``prime`` for ``length`` characters. Lines mode: start an item with
    ``prime`` after the begin token and stop at the end token (or after ``length`` characters);
    returns the whole item so the caller can check whether it is in the training data.
    """
    xp = backend.xp
    model.eval()
    if lines:
        ids = [vocab.bos] + list(np.asarray(vocab.encode(prime, what="--prime")).tolist()) if prime else [vocab.bos]
    else:
        if not prime:
            raise RnnlabError("stream-mode sampling needs priming text (--prime)")
        ids = np.asarray(vocab.encode(prime, what="--prime")).tolist()
    block = getattr(model, "block", None)
    if block is not None and len(ids) > block:  # a block model sees the last `block` characters only
        ids = ids[-block:]
    x = xp.asarray(np.asarray(ids, np.int64).reshape(-1, 1))  # (T_prime, 1)
    logits, state, _ = model.forward(x, None)
    last = backend.to_numpy(logits[-1, 0])
    produced = [prime] if lines else None
    for _ in range(length):
        nxt = choose(last, temperature, top_k, rng, top_p)
        if lines and nxt == vocab.eos:
            break
        ch = vocab.decode([nxt])
        emit(ch)
        if produced is not None:
            produced.append(ch)
        logits, state, _ = model.forward(xp.asarray(np.array([[nxt]], np.int64)), state)
        last = backend.to_numpy(logits[-1, 0])
    return "".join(produced) if produced is not None else None
