"""The hidden-state report: everything :mod:`.activations`, :mod:`.properties` and :mod:`.ngram`
find in a text, packed into one self-contained HTML file.

:func:`build` turns (model, vocabulary, text) into a JSON-able payload; :func:`render` puts the
payload into the page template (``static/report.html``, ``report.css``, ``report.js``, inlined:
the file needs no network and opens from disk). The page reads the payload from a ``<script
type="application/json">`` element, and draws everything with its own JavaScript.

What the payload holds, per display position ``t`` (the character shown; ``T`` of them):

- ``text``: the characters (characters outside the model's vocabulary are left out and counted);
- ``loss``: the character's loss ``-log p(x_t | x_<t)`` in nats under the RNN, the bigram and the
  n-gram (uint16 millinats, 65535 = none);
- ``top``: the K likeliest next characters after reading ``x_t``, with their probabilities;
- ``acts``: per ``(layer, quantity)`` the stored units' activations, each unit quantised to 16
  levels over its own range ``[lo, hi]`` (:func:`quantise`: 4 bits, unit-major); units are stored in priority order (the ranked units, then every h, c, gate
  unit) until ``max_mb`` is reached, so a long text or a wide model keeps a bounded file;
- ``props``: each property's value (uint8, counts clipped at 255) and the ranking;
- ``saturation``: per layer and sigmoid gate, each unit's fraction of steps below 0.1 and above 0.9;
- ``by_property``: mean losses of the three models over all characters and over the characters
  that follow a position where a binary property holds — where recurrence pays and where not.

Arrays travel as base64 strings of little-endian bytes.

Long texts: at most ``chars`` characters are shown, from a window at a random position (``seed``),
started at a line start; before it the model reads up to ``warmup`` characters so its state is
what it would be in the middle of the text. The report says so.
"""
from __future__ import annotations

import base64
import datetime as _dt
import json
from dataclasses import dataclass
from importlib import resources

import numpy as np

from ..errors import RnnlabError
from .activations import QUANTITIES, QUANTITY_NAMES, SIGMOID_GATES, Trace, cell_of, trace
from .ngram import KneserNey
from .properties import BINARY, PROPERTIES, rank_units, text_properties

NONE_U16 = 65535
"""The uint16 code for "no loss here" (the first character of a text)."""

SAT_LO, SAT_HI = 0.1, 0.9
"""Gate saturation thresholds of Karpathy et al. 2015."""


@dataclass
class Baseline:
    """The n-gram baseline: a Kneser-Ney model and what it was fitted on."""

    model: KneserNey
    described: str     # e.g. "the run's training split (1,003,854 characters)"
    in_sample: bool = False  # fitted on the very text shown (flatters it)

    @property
    def orders(self) -> tuple[int, int]:
        return (min(2, self.model.order), self.model.order)


def fit_baseline(ids, vocab_size: int, order: int, described: str, in_sample: bool = False) -> Baseline:
    """A :class:`Baseline` of ``order`` fitted on ``ids``."""
    return Baseline(KneserNey(vocab_size, order).fit(ids), described, in_sample)


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def _short(a) -> list[float]:
    """Floats to 6 significant digits (the JSON stays short; a unit's range keeps its precision)."""
    return [float(f"{v:.6g}") for v in np.asarray(a).tolist()]


def _u16_loss(x: np.ndarray) -> np.ndarray:
    """Nats -> uint16 millinats (clipped at 65.534 nats), NaN -> :data:`NONE_U16`."""
    q = np.where(np.isfinite(x), np.clip(np.round(np.nan_to_num(x) * 1000.0), 0, NONE_U16 - 1), NONE_U16)
    return q.astype("<u2")


LEVELS = 15
"""Activations are stored as 4-bit codes ``0..LEVELS`` over each unit's own range: 16 shades are
as many as the eye tells apart in a colour scale, and half the bytes of 8 bits."""


def quantise(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``a (T, n)`` -> ``(packed, lo (n,), hi (n,))``: codes ``q = round((a - lo) / (hi - lo) * 15)``
    in unit-major order ``k = j T + t``, two to a byte (``k`` even in the low nibble), so
    ``a ~ lo + q (hi - lo) / 15``; ``packed`` has ``ceil(n T / 2)`` bytes."""
    lo = a.min(axis=0).astype(np.float64)
    hi = a.max(axis=0).astype(np.float64)
    span = np.where(hi > lo, hi - lo, 1.0)
    q = np.round((a - lo) / span * LEVELS).clip(0, LEVELS).astype(np.uint8).T.reshape(-1)  # (n*T,) unit-major
    if q.size % 2:
        q = np.append(q, np.uint8(0))
    return q[0::2] | (q[1::2] << 4), lo, hi


# ------------------------------------------------------------------------------------ windows
def _window(n: int, chars: int, rng: np.random.Generator, is_newline: np.ndarray | None) -> tuple[int, int]:
    """``[start, end)`` of at most ``chars`` positions out of ``n``: all of them when they fit, else
    a window at a random start, moved to just after the next newline when one is near."""
    if n <= chars:
        return 0, n
    start = int(rng.integers(0, n - chars + 1))
    if is_newline is not None:
        nl = np.flatnonzero(is_newline[start:start + 400])
        if nl.size and start + nl[0] + 1 + chars <= n:
            start += int(nl[0]) + 1
    return start, start + chars


def _stream(model, vocab, ids: np.ndarray, chars: int, warmup: int, rng, baseline: Baseline | None, top_k: int):
    """Trace a window of a stream; returns ``(seq ids (T,), Trace, char losses {name: (T,)}, window info)``."""
    n = ids.size
    nl = ids == vocab.id_of("\n") if "\n" in vocab else None
    start, end = _window(n, chars, rng, nl)
    ws = max(0, start - warmup)
    run_ids = ids[ws:end]
    targets = np.append(ids[ws + 1:end], ids[end] if end < n else -1)
    tr, _ = trace(model, run_ids, targets, top_k=top_k)
    off = start - ws
    prev_loss = np.concatenate([[np.nan], tr.loss[:-1]])  # the loss of x_t is the previous step's
    sl = slice(off, None)
    shown = Trace(acts={k: v[sl] for k, v in tr.acts.items()}, loss=tr.loss[sl], top_ids=tr.top_ids[sl],
                  top_p=tr.top_p[sl])
    losses = {"rnn": prev_loss[sl]}
    if baseline is not None:
        o2, on = baseline.orders
        cs = max(0, start - on)
        nll = baseline.model.nll(ids[cs:end], start - cs, orders=(o2, on))
        losses["bigram"], losses["ngram"] = nll[o2], nll[on]
        if start == 0:
            losses["bigram"][0] = losses["ngram"][0] = np.nan
    info = {"unit": "characters", "start": start, "end": end, "total": int(n), "warmup": start - ws,
            "sampled": bool(end - start < n)}
    return ids[start:end], shown, losses, info


def _lines(model, vocab, items, chars: int, rng, baseline: Baseline | None, top_k: int):
    """Trace a run of lines-mode items, each from a fresh state: positions are
    ``<eos> item_1 <eos> item_2 ... <eos>`` (the boundary token shown as a newline)."""
    if len(items) == 0:
        raise RnnlabError("the text has no non-empty lines to show")
    lengths = items.lengths + 1  # each item and the boundary before it
    total = int(lengths.sum())
    i0 = 0
    if total > chars:  # a random run of items, of about ``chars`` positions
        tail = np.cumsum(lengths[::-1])[::-1]  # positions from item i to the end
        i0 = int(rng.integers(0, int(np.flatnonzero(tail >= chars).max()) + 1))
    reach = np.cumsum(lengths[i0:])
    i1 = i0 + max(1, int(np.searchsorted(reach, chars, side="right")))
    traces, seq = [], []
    for i in range(i0, i1):
        item = np.asarray(items[i], np.int64)
        inp = np.concatenate([[vocab.bos], item])
        tgt = np.append(item, vocab.eos)
        traces.append(trace(model, inp, tgt, top_k=top_k)[0])
        seq.append(inp)
    traces.append(trace(model, [vocab.bos], [-1], top_k=top_k)[0])  # the closing boundary
    seq.append(np.array([vocab.bos]))
    seq = np.concatenate(seq)
    tr = Trace.concat(traces)
    losses = {"rnn": np.concatenate([[np.nan], tr.loss[:-1]])}
    if baseline is not None:
        o2, on = baseline.orders
        nll = baseline.model.nll(seq, 0, orders=(o2, on))
        losses["bigram"], losses["ngram"] = nll[o2], nll[on]
        losses["bigram"][0] = losses["ngram"][0] = np.nan
    info = {"unit": "lines", "start": i0, "end": i1, "total": len(items), "warmup": 0, "sampled": i1 - i0 < len(items)}
    return seq, tr, losses, info


# ------------------------------------------------------------------------------------ payload
def _priority(model, ranking: dict) -> list[tuple[int, str, int]]:
    """Every ``(layer, q, unit)`` in the order they are stored: ranked units, then all h, c,
    then the gates."""
    seen, order = set(), []

    def add(key):
        if key not in seen:
            seen.add(key)
            order.append(key)

    for rows in ranking.values():
        for row in rows:
            add((row["layer"], row["q"], row["unit"]))
    for q in QUANTITIES[model.cell]:
        for k in range(model.layers):
            for u in range(model.hidden):
                add((k, q, u))
    return order


def _saturation(model, acts: dict) -> list[dict]:
    """Per layer: ``{gate: {"left": [...], "right": [...]}}``, each unit's fraction of steps below
    :data:`SAT_LO` and above :data:`SAT_HI`."""
    out = []
    for k in range(model.layers):
        layer = {}
        for g in SIGMOID_GATES[model.cell]:
            a = acts[(k, g)]
            layer[g] = {"left": np.round((a < SAT_LO).mean(axis=0), 4).tolist(),
                        "right": np.round((a > SAT_HI).mean(axis=0), 4).tolist()}
        out.append(layer)
    return out


def _by_property(props: dict, losses: dict, least: int = 20) -> list[dict]:
    """Mean loss per model over every character, then over the characters predicted right after a
    position where a binary property holds (for properties that hold there ``least`` times or more)."""
    ok = np.all([np.isfinite(v) for v in losses.values()], axis=0)
    rows = [{"property": None, "chars": int(ok.sum()), **{k: float(l[ok].mean()) for k, l in losses.items()}}]
    for name in BINARY:
        before = np.concatenate([[0.0], props[name][:-1]]) > 0  # held when x_t was predicted
        m = ok & before
        if m.sum() >= least:
            rows.append({"property": name, "chars": int(m.sum()), **{k: float(l[m].mean()) for k, l in losses.items()}})
    return rows


def build(model, vocab, text: str, *, lines: bool = False, chars: int = 4000, warmup: int = 1000, seed: int = 0,
          baseline: Baseline | None = None, top_k: int = 5, max_mb: float = 3.0, top_units: int = 5,
          meta: dict | None = None) -> dict:
    """The report's payload for ``text`` (see the module docstring).

    Parameters
    ----------
    model : RecurrentLM
    vocab : Vocab
        The run's vocabulary; characters of ``text`` outside it are skipped and counted.
    lines : bool
        A lines-mode run: each non-empty line is an item read from a fresh state.
    chars : int
        Most positions shown; a longer text is shown through a window (``seed`` picks where).
    warmup : int
        Characters before the window the model reads first (stream mode).
    baseline : Baseline, optional
        The n-gram to compare with; None leaves the comparison out.
    max_mb : float
        Budget for the stored activations (MB of packed 4-bit codes, before base64).
    meta : dict, optional
        Extra fields for the header (run path, checkpoint, step, ...).
    """
    from ..data import encode_lines, read_lines

    cell = cell_of(model)
    if chars < 1:
        raise RnnlabError(f"--chars must be at least 1, got {chars}")
    rng = np.random.default_rng(seed)
    if lines:
        items, unknown = encode_lines(vocab, read_lines(text), unknown="count", what="the text")
        seq, tr, losses, info = _lines(model, vocab, items, chars, rng, baseline, top_k)
        display = vocab.decode(seq, boundary_text="\n")
    else:
        ids, unknown = vocab.encode(text, unknown="count", what="the text")
        if ids.size < 2:
            raise RnnlabError("the text has fewer than 2 characters the model knows: nothing to show")
        seq, tr, losses, info = _stream(model, vocab, ids.astype(np.int64), chars, warmup, rng, baseline, top_k)
        display = vocab.decode(seq)
    T = len(display)
    assert T == tr.steps, (T, tr.steps)
    props = text_properties(display)
    ranking = rank_units(tr.acts, props, top=top_units)
    # activations within the budget, in priority order
    budget = int(max_mb * 1e6)
    keep: dict[tuple[int, str], list[int]] = {}
    used = 0
    for k, q, u in _priority(model, ranking):
        if used + T / 2 > budget:
            break
        keep.setdefault((k, q), []).append(u)
        used += T / 2
    groups = []
    for (k, q), units in sorted(keep.items(), key=lambda kv: (kv[0][0], QUANTITIES[cell].index(kv[0][1]))):
        units = sorted(units)
        qa, lo, hi = quantise(tr.acts[(k, q)][:, units])
        groups.append({"layer": k, "q": q, "units": units, "lo": _short(lo), "hi": _short(hi), "data": _b64(qa)})
    stored = sum(len(g["units"]) for g in groups)
    n_all = model.layers * model.hidden * len(QUANTITIES[cell])
    big = vocab.size > 65535
    mean = {name: float(np.nanmean(v)) if np.isfinite(v).any() else None for name, v in losses.items()}
    present = [name for name in PROPERTIES if ranking[name]]
    header = {"model": cell, "layers": model.layers, "hidden": model.hidden, "vocab": vocab.size,
              "mode": "lines" if lines else "stream", "unknown_chars": int(unknown),
              "stored_units": stored, "all_units": n_all, "max_mb": max_mb,
              "created": _dt.datetime.now().isoformat(timespec="seconds"), **info, **(meta or {})}
    if baseline is not None:
        header["baseline"] = {"orders": list(baseline.orders), "fitted_on": baseline.described,
                              "in_sample": baseline.in_sample}
    return {
        "format": "rnnlab-report", "version": 1, "meta": header,
        "text": display, "tokens": vocab.tokens, "boundary": bool(lines),
        "quantities": {q: QUANTITY_NAMES[q] for q in QUANTITIES[cell]},
        "gates": list(SIGMOID_GATES[cell]),
        "loss": {name: _b64(_u16_loss(v)) for name, v in losses.items()}, "mean_loss": mean,
        "top": {"k": int(tr.top_ids.shape[1]), "ids": _b64(tr.top_ids.astype("<u4" if big else "<u2")),
                "id_bytes": 4 if big else 2, "p": _b64(np.round(tr.top_p * 255).astype(np.uint8))},
        "acts": groups,
        "properties": {name: PROPERTIES[name] for name in PROPERTIES},
        "present": present,
        "underline": [n for n in present if n != "column"],  # where "value > 0" marks something
        "props": {name: _b64(np.clip(props[name], 0, 255).astype(np.uint8)) for name in present},
        "ranking": ranking,
        "saturation": _saturation(model, tr.acts),
        "by_property": _by_property(props, losses) if baseline is not None and T > 1 else [],
    }


# ------------------------------------------------------------------------------------ HTML
def _static(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def payload_json(payload: dict) -> str:
    """The payload as JSON that is safe inside a ``<script>`` element (no ``<``, ``>``, ``&``)."""
    s = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(payload: dict) -> str:
    """The self-contained report page for ``payload`` (from :func:`build`)."""
    return fill(_static("report.html"), {"CSS": _static("common.css") + _static("report.css"),
                                         "COMMON_JS": _static("common.js"), "REPORT_JS": _static("report.js"),
                                         "DATA": payload_json(payload)})


def fill(page: str, parts: dict[str, str]) -> str:
    """Replace each ``/*NAME*/`` mark of ``page`` by ``parts[NAME]`` in one pass (a part's own
    text is never searched for marks); every part must be used exactly once."""
    import re

    found = re.findall(r"/\*([A-Z_]+)\*/", page)
    if sorted(found) != sorted(parts):
        raise RuntimeError(f"template marks {sorted(found)} do not match the parts {sorted(parts)}")
    return re.sub(r"/\*([A-Z_]+)\*/", lambda m: parts[m.group(1)].replace("</script", "<\\/script"), page)
