"""How surprising each character of a text is to a trained model.

For every character ``c_i`` the model's log-probability given everything before it, and the
surprisal in bits::

    log p_i   = log softmax(z_i)[c_i]           nats; z_i the logits after c_<i
    s_i       = -log p_i / ln 2                 bits

Stream mode: the text is one sequence; the first character has no context and is not scored
(as in ``rnnlab eval``), the state is carried across chunks of :data:`CHUNK` characters, so
memory stays bounded for long texts. Lines mode: each non-empty line is an item, scored from the
begin token, and its end token is scored too (shown as ``"<eos>"``), as training scores items.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import backend
from ..data import read_lines
from ..errors import RnnlabError

CHUNK = 1024
"""Characters per forward pass in stream mode."""


@dataclass
class Scored:
    char: str                 # the character ("<eos>" for a line's end token)
    logp: float | None        # nats; None for a character without context
    line: int = 0             # lines mode: the item's index (0-based)


def _log_probs(model, x: np.ndarray, y: np.ndarray, state):
    """``log p(y_t | x_<=t)`` for one row: ``x, y (T,)`` ids -> ``(T,)`` float64, and the state."""
    xp = backend.xp
    logits, state, _ = model.forward(xp.asarray(x.reshape(-1, 1).astype(np.int64)), state)   # (T, 1, V)
    z = backend.to_numpy(logits[:, 0, :]).astype(np.float64)                                 # (T, V)
    if not np.isfinite(z).all():
        raise RnnlabError("the model produced NaN/Inf scores (its training diverged): score with the other "
                          "checkpoint (--checkpoint best|last) or retrain with a lower --lr and --clip 1")
    z -= z.max(axis=1, keepdims=True)
    logz = np.log(np.exp(z).sum(axis=1))                                                      # (T,)
    return z[np.arange(len(y)), y] - logz, state


def score_text(model, vocab, text: str, lines: bool, what: str = "the text") -> list[Scored]:
    """Every character of ``text`` with its log-probability under ``model`` (in eval mode).
    Characters the model never saw raise :class:`RnnlabError` naming them."""
    model.eval()
    out: list[Scored] = []
    if lines:
        items = read_lines(text)
        if not items:
            raise RnnlabError(f"{what} has no non-empty lines to score")
        for k, item in enumerate(items):
            ids = np.asarray(vocab.encode(item, what=what), np.int64)
            x = np.concatenate([[vocab.bos], ids])
            y = np.concatenate([ids, [vocab.eos]])
            lp, _ = _log_probs(model, x, y, None)
            out.extend(Scored(ch, float(v), k) for ch, v in zip([*item, "<eos>"], lp))
        return out
    ids = np.asarray(vocab.encode(text, what=what), np.int64)
    if len(ids) == 0:
        raise RnnlabError(f"{what} is empty: nothing to score")
    out.append(Scored(text[0], None))
    state = None
    for lo in range(0, len(ids) - 1, CHUNK):
        hi = min(lo + CHUNK, len(ids) - 1)
        lp, state = _log_probs(model, ids[lo:hi], ids[lo + 1:hi + 1], state)
        out.extend(Scored(text[i + 1], float(v)) for i, v in zip(range(lo, hi), lp))
    return out


def summary(scored: list[Scored]) -> dict:
    """Mean over the scored characters: nats, bits per character, perplexity, count."""
    lps = [s.logp for s in scored if s.logp is not None]
    if not lps:
        return {"loss_nats": None, "bits_per_char": None, "perplexity": None, "scored": 0}
    loss = -float(np.mean(lps))
    return {"loss_nats": loss, "bits_per_char": loss / np.log(2), "perplexity": float(np.exp(min(loss, 700))),
            "scored": len(lps)}
