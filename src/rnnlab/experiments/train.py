"""A tiny training loop for sequence classification and regression on fresh synthetic batches.

Each step draws a new batch from ``sample(rng)`` (the data are unlimited, so there is no
over-fitting to speak of), runs ``forward``, the loss, ``backward``, optional norm clipping and
one optimizer step::

    out, cache = model.forward(x, lengths)          out (S, B, O)
    loss, dout = loss_and_grad(out, batch)          cross-entropy (S, B) or MSE (S, B, 1)
    model.backward(dout, cache)
    norm = clip_grad_norm(model.grads, clip)        the norm *before* clipping is recorded
    optimizer.step()

A step whose gradient is not finite is skipped (and counted), as a trainer should.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import backend
from ..data.synthetic import SeqBatch
from ..nn.losses import mse, softmax_cross_entropy
from ..optim import clip_grad_norm, make_optimizer


@dataclass
class TrainConfig:
    """Steps, batch size, optimizer name and learning rate, clipping threshold (None: off)."""

    steps: int = 500
    batch: int = 32
    lr: float = 3e-3
    optimizer: str = "adam"
    clip: float | None = 1.0


@dataclass
class History:
    """Per step: training loss and gradient norm before clipping; skipped non-finite steps."""

    loss: list = field(default_factory=list)
    grad_norm: list = field(default_factory=list)
    skipped: int = 0
    stopped_at: int | None = None  # the step after which ``until`` said stop, if it did


def loss_and_grad(out, batch: SeqBatch):
    """``(loss float, dout like out)`` for a batch: mean cross-entropy over the ``S * B`` output
    items (``batch.y`` int ``(S, B)``) or mean squared error (``batch.y`` ``(S, B, 1)``)."""
    if batch.kind == "class":
        loss, dout = softmax_cross_entropy(out, batch.y, ignore_index=None)
    else:
        loss, dout = mse(out, batch.y.astype(out.dtype, copy=False))
    return backend.to_float(loss), dout


def train(model, sample: Callable[[np.random.Generator], SeqBatch], cfg: TrainConfig,
          rng: np.random.Generator, optimizer_kw: dict | None = None, until=None,
          check_every: int = 100, *, optimizer=None) -> History:
    """Train ``model`` in place for at most ``cfg.steps`` steps on batches ``sample(rng)``.

    ``until(model) -> bool``, if given, is asked every ``check_every`` steps; training stops
    when it says True (early stopping on a success criterion; ``History.stopped_at`` records
    the step). Training continues a run when given the ``optimizer`` it had (and ``rng`` in the
    state it had): a long run can train in chunks between checkpoints and resume exactly.
    """
    opt = optimizer if optimizer is not None else make_optimizer(cfg.optimizer, model.params, model.grads,
                                                                 lr=cfg.lr, **(optimizer_kw or {}))
    hist = History()
    model.train()
    for _ in range(cfg.steps):
        batch = sample(rng)
        model.zero_grad()
        out, cache = model.forward(batch.x, batch.lengths)
        loss, dout = loss_and_grad(out, batch)
        model.backward(dout, cache)
        if cfg.clip is not None:
            norm = clip_grad_norm(model.grads, cfg.clip)
        else:
            norm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in model.grads.values()))
        hist.loss.append(loss)
        hist.grad_norm.append(norm)
        if not (math.isfinite(norm) and math.isfinite(loss)):
            hist.skipped += 1
        else:
            opt.step()
        step = len(hist.loss)
        if until is not None and step % check_every == 0 and until(model):
            hist.stopped_at = step
            break
    return hist


def evaluate(model, batch: SeqBatch, chunk: int = 2048) -> dict:
    """Loss and per-sequence metrics on a (large) batch, in chunks of ``chunk`` sequences.

    Returns ``{"loss": mean loss, "acc": (S, B) bool correct or None, "sq_err": (B,) or None}``.
    """
    model.eval()
    B = batch.x.shape[1]
    losses, correct, sq = [], [], []
    for s in range(0, B, chunk):
        e = min(B, s + chunk)
        lengths = None if batch.lengths is None else batch.lengths[s:e]
        x = batch.x[:, s:e]
        if lengths is not None:
            x = x[: int(lengths.max())]  # (T', b, I): no all-padding steps
        sub = SeqBatch(x, batch.y[:, s:e], lengths, batch.kind)
        out, _ = model.forward(sub.x, sub.lengths)
        loss, _ = loss_and_grad(out, sub)
        losses.append(loss * (e - s))
        out = backend.to_numpy(out)
        if batch.kind == "class":
            correct.append(out.argmax(axis=-1) == sub.y)  # (S, b)
        else:
            sq.append(((out - sub.y) ** 2).mean(axis=(0, 2)))  # (b,)
    model.train()
    return {
        "loss": sum(losses) / B,
        "acc": np.concatenate(correct, axis=1) if correct else None,
        "sq_err": np.concatenate(sq) if sq else None,
    }
