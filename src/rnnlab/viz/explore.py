"""One trained run, ready to be looked into: what ``rnnlab visualize`` and ``rnnlab serve`` share.

An :class:`Explorer` holds the model (eval mode), its vocabulary and the run's configuration, fits
the n-gram baseline on the run's training split once (re-reading the training text; when that
text is gone, each report fits it on its own text and says so), and offers

- :meth:`Explorer.report`: the self-contained HTML report of a text (:mod:`.report`);
- :meth:`Explorer.sample`: a sample, one character at a time, each with the hidden state ``h``
  of every layer and the next-character distribution after it (the web app's stream).
"""
from __future__ import annotations

import threading
from typing import Iterator

import numpy as np

from ..errors import RnnlabError
from ..lm.sample import choose
from . import report as _report
from .activations import cell_of, trace


class Explorer:
    """``Explorer(model, vocab, cfg, data, ngram=5, meta=None)``; ``meta`` goes into every report's
    header (run path, checkpoint, step)."""

    def __init__(self, model, vocab, cfg, data: dict, *, ngram: int = 5, meta: dict | None = None):
        self.cell = cell_of(model)
        self.model, self.vocab, self.cfg, self.data = model, vocab, cfg, data
        self.lines = bool(cfg.lines)
        self.ngram = int(ngram)
        self.meta = dict(meta or {})
        self.meta.setdefault("nonlinearity", getattr(model, "nonlinearity", "tanh"))
        self._baseline = None
        self._baseline_done = False
        self._lock = threading.Lock()
        model.eval()

    # ------------------------------------------------------------------------------ baseline
    def baseline(self) -> _report.Baseline | None:
        """The n-gram fitted on the run's training split, or None when that text is gone or
        ``ngram`` is 0 (decided once)."""
        with self._lock:
            if not self._baseline_done and self.ngram > 0:
                from ..lm.corpus import rebuild_corpus

                corpus = rebuild_corpus(self.cfg, self.data, self.vocab)
                if corpus is not None:
                    train = corpus.split.train
                    ids = train if not self.lines else _with_boundaries(train, self.vocab.bos)
                    n = len(train) if not self.lines else int(train.offsets[-1])
                    self._baseline = _report.fit_baseline(
                        ids, self.vocab.size, self.ngram,
                        f"the run's training split ({n:,} characters of {self.data.get('source')})")
                self._baseline_done = True
            return self._baseline

    def _in_sample_baseline(self, text: str) -> _report.Baseline:
        """The n-gram fitted on ``text`` itself, for when the training text is gone."""
        if self.lines:
            from ..data import encode_lines, read_lines

            items, _ = encode_lines(self.vocab, read_lines(text), unknown="count")
            ids = _with_boundaries(items, self.vocab.bos)
        else:
            ids = self.vocab.encode(text, unknown="skip")
        return _report.fit_baseline(ids, self.vocab.size, self.ngram,
                                    "the text shown (the run's training text was not found)", in_sample=True)

    # ------------------------------------------------------------------------------ report
    def report(self, text: str, *, chars: int = 4000, seed: int = 0, warmup: int = 1000, max_mb: float = 3.0,
               text_file: str | None = None) -> tuple[str, dict]:
        """``(html, payload)`` of the report for ``text``."""
        base = self.baseline()
        if base is None and self.ngram > 0:
            base = self._in_sample_baseline(text)
        meta = {**self.meta, "seed": seed, "text_file": text_file}
        payload = _report.build(self.model, self.vocab, text, lines=self.lines, chars=chars, warmup=warmup,
                                seed=seed, baseline=base, max_mb=max_mb, meta=meta)
        return _report.render(payload), payload

    # ------------------------------------------------------------------------------ sampling
    def sample(self, prime: str, *, length: int, temperature: float, top_k: int, rng: np.random.Generator,
               top: int = 5) -> Iterator[dict]:
        """Yield one dict per character: ``{"ch", "prime": bool, "h": [(H,) per layer], "top":
        [(token, p), ...]}`` — first the priming text's characters as the model reads them, then
        ``length`` sampled ones (lines mode: until the end token). The distribution is
        :func:`rnnlab.lm.sample.choose`'s (temperature, top-k), as ``rnnlab sample`` draws."""
        vocab, model = self.vocab, self.model
        if self.lines:
            ids = [vocab.bos] + (np.asarray(vocab.encode(prime, what="the prime")).tolist() if prime else [])
        else:
            if not prime:
                raise RnnlabError("the prime is empty: type a few characters for the model to continue")
            ids = np.asarray(vocab.encode(prime, what="the prime")).tolist()
        tr, state = trace(model, ids, top_k=top)
        shown = ids[1:] if self.lines else ids
        skip = 1 if self.lines else 0
        for j, i in enumerate(shown):
            yield self._step_dict(vocab.tokens[i], True, tr, j + skip)
        logp = tr.last_logp
        for _ in range(length):
            nxt = choose(logp, temperature, top_k, rng)
            if self.lines and nxt == vocab.eos:
                return
            tr, state = trace(model, [nxt], state=state, top_k=top)
            yield self._step_dict(vocab.tokens[nxt], False, tr, 0)
            logp = tr.last_logp

    def _step_dict(self, ch: str, prime: bool, tr, t: int) -> dict:
        return {"ch": ch, "prime": prime, "h": [tr.acts[(k, "h")][t] for k in range(self.model.layers)],
                "top": [(self.vocab.tokens[int(i)], float(p)) for i, p in zip(tr.top_ids[t], tr.top_p[t])]}


def _with_boundaries(items, bos: int) -> np.ndarray:
    """Lines-mode items as one id sequence ``bos item_1 bos item_2 ... bos`` (the boundary token
    ends one item and begins the next)."""
    flat = np.asarray(items.flat, np.int64)
    seq = np.insert(flat, items.offsets[:-1], bos)
    return np.append(seq, bos)
