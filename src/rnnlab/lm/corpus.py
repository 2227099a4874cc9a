"""A training corpus: the text, its vocabulary, its splits, and where it came from.

Stream mode keeps the encoded text as one compact integer array and splits it into a training
head and contiguous validation and test tails. Lines mode keeps each non-empty line as an item
(stored flat, :class:`~rnnlab.data.Ragged`) and holds out a random set of lines, chosen with a
generator seeded from the run's seed so that a resumed run sees the same split.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..data import (Ragged, Split, Vocab, builtin_corpus, encode_lines, read_lines, read_text, split_lines, split_stream,
                    spread_pieces)
from ..errors import RnnlabError


@dataclass
class Corpus:
    mode: str              # "stream" | "lines"
    vocab: Vocab
    split: Split           # stream: id arrays; lines: Ragged items
    source: str            # the path, or a description of the built-in corpus
    sha256: str            # of the text, to notice a changed file on --resume
    train_lines: list | None = None  # lines mode: the training items as text (to mark samples)
    pieces: int = 1        # stream mode: pieces of the text that validation and test are spread over

    def describe(self) -> str:
        where = f", validation and test in {self.pieces} pieces spread through the text" if self.pieces > 1 else ""
        return self.split.describe() + where


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_text(path: str | None) -> tuple[str, str]:
    """``(text, source)``: the file at ``path``, or the built-in corpus when ``path`` is None."""
    if path is None:
        text, desc = builtin_corpus()
        return text, desc
    return read_text(path), str(path)


def rebuild_corpus(cfg, data: dict, vocab: Vocab) -> Corpus | None:
    """A run's corpus, re-read from its source (the file, or the built-in corpus) and re-split as
    training split it; None when the source is gone or no longer the text the run trained on."""
    src = data.get("source")
    if not isinstance(src, str):
        return None
    builtin = src.startswith("Python ") and "standard-library source" in src  # what load_text(None) describes
    try:
        text = builtin_corpus()[0] if builtin else read_text(src)
    except RnnlabError:
        return None
    if text_digest(text) != data.get("sha256"):
        return None
    return corpus_for(text, src, cfg, vocab)


def corpus_for(text: str, source: str, cfg, vocab: Vocab | None = None) -> Corpus:
    """:func:`build_corpus` with the data options of a :class:`~rnnlab.lm.config.TrainConfig`
    (``lines``, ``val_frac``, ``test_frac``, ``split``, ``seed``): how every run builds its corpus."""
    return build_corpus(text, source, lines=cfg.lines, val_frac=cfg.val_frac, test_frac=cfg.test_frac,
                        split=cfg.split, seed=cfg.seed, vocab=vocab)


def build_corpus(text: str, source: str, *, lines: bool, val_frac: float, test_frac: float, seed: int,
                 vocab: Vocab | None = None, split: str = "tail") -> Corpus:
    """Encode and split ``text`` (stream mode: ``split`` is ``"spread"``, validation and test in
    :func:`spread_pieces` pieces, or ``"tail"``, one piece).
    With ``vocab`` (a resumed run) the text must fit it."""
    digest = text_digest(text)
    if lines:
        items = read_lines(text)
        if not items:
            raise RnnlabError(f"{source} has no non-empty lines to use with --lines")
        vocab = vocab or Vocab.from_lines(items)
        rng = np.random.default_rng([seed, 0x5EED])  # the split's own generator
        tr, va, te = split_lines(items, val_frac, test_frac, rng)
        enc = [encode_lines(vocab, part, what=source) if part else Ragged.from_arrays([]) for part in (tr, va, te)]
        return Corpus("lines", vocab, Split(*enc), source, digest, train_lines=tr)
    vocab = vocab or Vocab.from_text(text)
    ids = vocab.encode(text, what=source)
    pieces = spread_pieces(len(ids), val_frac, test_frac) if split == "spread" else 1
    return Corpus("stream", vocab, split_stream(ids, val_frac, test_frac, pieces), source, digest, pieces=pieces)
