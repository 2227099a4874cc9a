"""Data for the char-LM: reading text, the vocabulary, splits and batching.

- :mod:`.text` — :func:`read_text` (UTF-8 files with one-line errors), :func:`read_lines`,
  :func:`split_stream` (contiguous head/tails), :func:`split_lines` (random held-out lines).
- :mod:`.vocab` — :class:`Vocab`: characters by code point (+ the ``<eos>`` boundary token in
  lines mode), vectorised :meth:`~Vocab.encode` / :meth:`~Vocab.decode`, JSON round trip.
- :mod:`.batching` — :class:`StreamBatcher` (B parallel streams, truncated BPTT),
  :class:`LinesBatcher` (padded items, ignore index -1), in-order evaluation iterators.
- :mod:`.builtin` — :func:`builtin_corpus`: Python's standard-library source, no download.

Shape legend: ``T`` time, ``B`` batch, ``N`` characters, ``V`` vocabulary size.
"""
from .batching import (
    IGNORE_INDEX,
    LinesBatch,
    LinesBatcher,
    Ragged,
    StreamBatch,
    StreamBatcher,
    encode_lines,
    lines_eval_batches,
    stream_eval_batches,
)
from .builtin import BUILTIN_MODULES, builtin_corpus
from .text import SPLITS, Split, read_lines, read_text, split_lines, split_stream, spread_pieces
from .vocab import BOUNDARY_NAME, Vocab

__all__ = [
    "BOUNDARY_NAME",
    "BUILTIN_MODULES",
    "IGNORE_INDEX",
    "LinesBatch",
    "LinesBatcher",
    "Ragged",
    "Split",
    "StreamBatch",
    "StreamBatcher",
    "Vocab",
    "builtin_corpus",
    "encode_lines",
    "lines_eval_batches",
    "read_lines",
    "read_text",
    "split_lines",
    "split_stream",
    "spread_pieces",
    "SPLITS",
    "stream_eval_batches",
]
