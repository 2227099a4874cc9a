"""Held-out evaluation: average negative log-likelihood per character, in nats.

::

    loss  = -(1/N) sum_i log p(c_i | c_<i)      nats per character
    bpc   = loss / ln 2                         bits per character
    ppl   = exp(loss)                           perplexity

Stream mode scores every character of the split except the first (nothing precedes it), in
``B`` contiguous rows with the state carried along each row (the block models, which carry
nothing, see each chunk of ``seq_len`` characters on its own, as they were trained). Lines mode scores every character
of every item plus its end token, each item from a fresh state.

Each batch's rows may be split over threads as in training (``shards=``, a
:class:`~rnnlab.lm.shards.BatchShards`): the rows are independent, so only the order in which
the per-row sums are added changes.
"""
from __future__ import annotations

import math

from .. import backend
from ..data import lines_eval_batches, stream_eval_batches
from .shards import BatchShards


def nll_sum(model, data, mode: str, batch_size: int = 32, seq_len: int = 100,
            shards: BatchShards | None = None) -> tuple[float, int]:
    """``(sum of -log p in nats, number of characters scored)`` over ``data`` (ids or items);
    ``shards`` (for ``model``) splits each batch's rows over its threads, None runs them on one."""
    if shards is not None and shards.model is not model:
        raise ValueError("shards must be a BatchShards made for the model being evaluated")
    xp = backend.xp
    run = (shards if shards is not None else BatchShards(model, 1)).loss_sum
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        if mode == "lines":
            if len(data) == 0:
                return 0.0, 0
            for x, y, lengths in lines_eval_batches(data, batch_size):
                loss, _ = run(xp.asarray(x), xp.asarray(y), None, lengths)
                total += backend.to_float(loss)
                count += int((y >= 0).sum())
        else:
            if len(data) < 2:
                return 0.0, 0
            state = None
            for x, y, reset in stream_eval_batches(data, batch_size, seq_len):
                if reset:
                    state = None
                loss, state = run(xp.asarray(x), xp.asarray(y), state)
                if not model.carries_state:  # the block models score each chunk on its own
                    state = None
                total += backend.to_float(loss)
                count += int((y >= 0).sum())
    finally:
        model.train(was_training)
    return total, count


def summarize(total: float, count: int) -> dict:
    """The numbers a person reads: nats, bits per character, perplexity, characters."""
    loss = total / count if count else float("nan")
    return {"loss_nats": loss, "bits_per_char": loss / math.log(2) if count else float("nan"),
            "perplexity": math.exp(loss) if count and loss < 700 else float("inf") if count else float("nan"),
            "chars": count}


def evaluate(model, data, mode: str, batch_size: int = 32, seq_len: int = 100,
             shards: BatchShards | None = None) -> dict:
    return summarize(*nll_sum(model, data, mode, batch_size, seq_len, shards))
