"""Every hidden unit's activation and the next-character prediction, step by step.

The numbers come from the engine's own forward pass, nothing is recomputed. For a
:class:`~rnnlab.models.RecurrentLM`, ``model.forward(x)`` returns ``(logits, state_n, (rc, drop,
lc))``, where ``rc`` is the recurrent layer's cache; per layer ``k`` (one direction)
``rc["layers"][k]["dirs"][0]`` holds the preallocated buffers of :mod:`rnnlab.nn.recurrent`::

    S  (T+1, B, H)     S[0] = h_0, S[t+1] = h_t                         every cell
    C  (T+1, B, H)     C[0] = c_0, C[t+1] = c_t                         LSTM
    A  (T, B, G*H)     the gates of step t, activated, written over the input projection:
                       LSTM  [i | f | g | o]   i, f, o = sigmoid(.),  g = tanh(.)
                       GRU   [r | z | n]       r, z = sigmoid(.),     n = tanh(.) (the candidate)

(``A`` is a view of the ``(T+1, B, G*H)`` gate buffer, whose spare row the backward pass uses;
no backward runs here, so the gates are intact.) The logits ``(T, B, V)`` give the next-character
distribution after each step::

    log p_t = z_t - logsumexp(z_t)          loss_t = -log p_t[y_t]  (nats)

Traces run with ``B = 1`` in chunks of ``chunk`` steps, carrying the state from one chunk to the
next, so a long text costs memory for one chunk. Buffers are copied out of the cache at once: the
engine's workspace pool may hand them to the next forward.

Shape legend: ``T`` steps, ``H`` hidden units, ``G`` gates, ``V`` vocabulary, ``K`` top predictions.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import backend
from ..errors import RnnlabError

QUANTITIES = {"rnn": ("h",), "lstm": ("h", "c", "i", "f", "g", "o"), "gru": ("h", "r", "z", "n")}
"""What each cell exposes per unit, in display order."""

SIGMOID_GATES = {"rnn": (), "lstm": ("i", "f", "o"), "gru": ("r", "z")}
"""The gates that lie in (0, 1) and can saturate at either end (Karpathy et al. 2015, fig. 3)."""

GATE_SLOTS = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}
"""The order of the gate blocks in the cache's ``A`` buffer (PyTorch's)."""

QUANTITY_NAMES = {"h": "hidden state h", "c": "cell state c", "i": "input gate i", "f": "forget gate f",
                  "g": "candidate g", "o": "output gate o", "r": "reset gate r", "z": "update gate z",
                  "n": "candidate n"}


@dataclass
class Trace:
    """What a model did over ``T`` steps of one sequence.

    ``acts[(layer, q)]`` is ``(T, H)`` float32 for each quantity ``q`` of :data:`QUANTITIES`;
    ``loss[t] = -log p(targets[t] | x_0..x_t)`` in nats (NaN where the target is negative or
    absent); ``top_ids`` / ``top_p`` ``(T, K)``: the K likeliest next ids after step ``t`` and
    their probabilities, likeliest first.
    """

    acts: dict = field(default_factory=dict)
    loss: np.ndarray = None
    top_ids: np.ndarray = None
    top_p: np.ndarray = None
    last_logp: np.ndarray = None

    @property
    def steps(self) -> int:
        return 0 if self.loss is None else int(self.loss.shape[0])

    @staticmethod
    def concat(traces: list["Trace"]) -> "Trace":
        """One trace of the steps of ``traces`` in order."""
        if not traces:
            raise ValueError("nothing to concatenate")
        return Trace(acts={key: np.concatenate([t.acts[key] for t in traces]) for key in traces[0].acts},
                     loss=np.concatenate([t.loss for t in traces]),
                     top_ids=np.concatenate([t.top_ids for t in traces]),
                     top_p=np.concatenate([t.top_p for t in traces]), last_logp=traces[-1].last_logp)


def cell_of(model) -> str:
    """``"rnn" | "lstm" | "gru"`` for a recurrent language model; a one-line error otherwise."""
    from ..models import RecurrentLM

    if not isinstance(model, RecurrentLM):
        kind = getattr(model, "kind", type(model).__name__)
        raise RnnlabError(f"this run holds a {kind} model, which has no hidden state to show: visualize a run "
                          "trained with --model rnn, lstm or gru")
    if model.rnn.num_directions != 1:
        raise RnnlabError("bidirectional models cannot predict the next character: visualize a one-directional run")
    return model.cell


def channels(model) -> list[tuple[int, str]]:
    """Every ``(layer, quantity)`` the model exposes, layer by layer."""
    cell = cell_of(model)
    return [(k, q) for k in range(model.layers) for q in QUANTITIES[cell]]


def read_cache(model, rc) -> dict:
    """``{(layer, q): (T, B, H) view}`` of the activations in a recurrent cache (see the module
    docstring for the buffers)."""
    cell = cell_of(model)
    H = model.hidden
    out = {}
    for k, layer in enumerate(rc["layers"]):
        d = layer["dirs"][0]
        out[(k, "h")] = d["S"][1:]  # (T, B, H): h_1..h_T
        if cell == "lstm":
            out[(k, "c")] = d["C"][1:]
        if cell in GATE_SLOTS:
            A = d["A"]  # (T, B, G*H) activated gates
            for j, q in enumerate(GATE_SLOTS[cell]):
                out[(k, q)] = A[:, :, j * H:(j + 1) * H]
    return out


def _top(logp: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest entries of each row of ``logp (T, V)``: ``(ids (T, k), probabilities (T, k))``."""
    k = min(k, logp.shape[1])
    part = np.argpartition(-logp, k - 1, axis=1)[:, :k]  # (T, k), unordered
    vals = np.take_along_axis(logp, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    ids = np.take_along_axis(part, order, axis=1)
    return ids.astype(np.int32), np.exp(np.take_along_axis(vals, order, axis=1)).astype(np.float32)


def trace(model, ids, targets=None, state=None, *, top_k: int = 5, chunk: int = 1024):
    """Run ``ids (T,)`` through ``model`` (one sequence) and record every step.

    Parameters
    ----------
    model : RecurrentLM
        In eval mode (no dropout); its own ``forward`` runs, in chunks of ``chunk`` steps.
    ids : array_like of int, shape (T,)
    targets : array_like of int, shape (T,), optional
        The id each step should predict (usually ``ids`` shifted by one); ``-1`` for none.
    state : optional
        The state before ``ids[0]`` (None: the model's zero state).

    Returns
    -------
    (Trace, state_n)
        ``state_n`` continues the sequence (pass it to the next call).
    """
    cell_of(model)
    xp = backend.xp
    ids = np.asarray(ids).reshape(-1).astype(np.int64)
    T = ids.shape[0]
    tg = np.full(T, -1, np.int64) if targets is None else np.asarray(targets).reshape(-1).astype(np.int64)
    if tg.shape != (T,):
        raise ValueError(f"targets must have shape ({T},), got {tg.shape}")
    keys = channels(model)
    acts = {key: np.empty((T, model.hidden), np.float32) for key in keys}
    loss = np.full(T, np.nan, np.float32)
    K = min(top_k, model.vocab_size)
    top_ids = np.empty((T, K), np.int32)
    top_p = np.empty((T, K), np.float32)
    logp = None
    was_training = model.training
    model.eval()
    try:
        for s in range(0, T, chunk):
            e = min(T, s + chunk)
            x = xp.asarray(ids[s:e].reshape(-1, 1))  # (t, 1)
            logits, state, (rc, _, _) = model.forward(x, state)
            for key, a in read_cache(model, rc).items():
                acts[key][s:e] = backend.to_numpy(a[:, 0, :])
            z = backend.to_numpy(logits[:, 0, :]).astype(np.float64)  # (t, V)
            zmax = z.max(axis=1, keepdims=True)
            logp = z - (zmax + np.log(np.exp(z - zmax).sum(axis=1, keepdims=True)))  # (t, V) log-softmax
            top_ids[s:e], top_p[s:e] = _top(logp, K)
            y = tg[s:e]
            ok = y >= 0
            loss[s:e][ok] = -logp[np.flatnonzero(ok), y[ok]]
    finally:
        model.train(was_training)
    last = None if logp is None else logp[-1]
    return Trace(acts=acts, loss=loss, top_ids=top_ids, top_p=top_p, last_logp=last), state
