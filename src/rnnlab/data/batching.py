"""Mini-batches for the char-LM, time-major, with exact resume.

Shape legend: ``T`` time steps of a chunk, ``B`` batch (parallel streams or items), ``N``
characters of a split.

Stream mode (:class:`StreamBatcher`, :func:`stream_eval_batches`)
    The training ids are cut into ``B`` contiguous rows, one per parallel stream. Chunk ``k``
    feeds ``x = rows[:, kT:kT+T]`` and targets ``y = rows[:, kT+1:kT+T+1]`` (time-major, so
    ``x[t, b]`` is stream ``b`` at step ``t``). Consecutive chunks continue each stream, so an
    RNN's final state of one chunk is the right initial state of the next (truncated BPTT).
    When the streams wrap around to their beginnings the batch says ``reset=True``.

Lines mode (:class:`LinesBatcher`, :func:`lines_eval_batches`)
    Each item (a line's ids) becomes the input ``[BOS] + chars`` and the target
    ``chars + [EOS]`` (BOS and EOS are both the boundary id 0). A batch is padded to its longest
    item: padded inputs are ``0``, padded targets are ``-1`` (the ignore index), and
    ``lengths (B,)`` gives each item's true length ``len(chars) + 1``.

Batch arrays are ``int32``; the corpus itself stays one compact array (uint8 for ordinary
text), and lines are stored flat with offsets (:class:`Ragged`).

``state()`` returns a small JSON-ready dict and ``load_state(d)`` continues exactly where
``state()`` was taken: the batches that follow equal those of an uninterrupted run.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple, Sequence

import numpy as np

from ..errors import RnnlabError
from .vocab import Vocab

__all__ = [
    "IGNORE_INDEX",
    "StreamBatch",
    "LinesBatch",
    "StreamBatcher",
    "stream_eval_batches",
    "Ragged",
    "encode_lines",
    "LinesBatcher",
    "lines_eval_batches",
]

IGNORE_INDEX = -1
"""Target value of padded positions; losses skip it."""


class StreamBatch(NamedTuple):
    """One stream-mode chunk; unpacks as ``x, y, reset``.

    Attributes
    ----------
    x : ndarray, shape (T, B), int32
        Input ids.
    y : ndarray, shape (T, B), int32
        Target ids, ``x`` shifted one step ahead; ``-1`` where nothing is scored (only in the
        last chunk of :func:`stream_eval_batches`).
    reset : bool
        True when the streams (re)start: the caller must zero its hidden state first.
    """

    x: np.ndarray
    y: np.ndarray
    reset: bool


class LinesBatch(NamedTuple):
    """One lines-mode batch; unpacks as ``x, y, lengths``.

    Attributes
    ----------
    x : ndarray, shape (T, B), int32
        ``[BOS] + chars`` per column, padded with 0 after ``lengths[b]`` steps.
    y : ndarray, shape (T, B), int32
        ``chars + [EOS]`` per column, padded with ``-1`` (ignore index).
    lengths : ndarray, shape (B,), int64
        ``len(chars) + 1`` per item; ``T == lengths.max()``.
    """

    x: np.ndarray
    y: np.ndarray
    lengths: np.ndarray


def _positive_int(value, label: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise RnnlabError(f"{label} must be a positive integer, got {value!r}")
    return int(value)


def _as_ids(ids) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be a 1-D integer array, got shape {ids.shape} dtype {ids.dtype}")
    return ids


def _bad_state(what: str) -> RnnlabError:
    return RnnlabError(
        f"the saved batcher position does not fit this run ({what}): resume with the same text, "
        f"--batch and --seq-len, or start a new run"
    )


def _check_state(d, kind: str, expected: dict, counters: dict) -> None:
    """Validate a state dict: its kind, its configuration and its counters' ranges."""
    if not isinstance(d, dict) or d.get("kind") != kind:
        got = d.get("kind") if isinstance(d, dict) else type(d).__name__
        raise _bad_state(f"expected a {kind!r} batcher state, got {got!r}")
    for key, want in expected.items():
        if d.get(key) != want:
            raise _bad_state(f"{key} was {d.get(key)!r}, now {want!r}")
    for key, hi in counters.items():
        v = d.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < hi:
            raise _bad_state(f"{key} {v!r} out of range [0, {hi})")


# ---------------------------------------------------------------------------------------------
# stream mode
# ---------------------------------------------------------------------------------------------
class StreamBatcher:
    """``B`` parallel contiguous streams over the training ids, chunk after chunk, forever.

    Parameters
    ----------
    ids : ndarray, shape (N,)
        Training ids (any integer dtype; kept by reference, not copied).
    batch_size : int
        ``B``, the number of parallel streams. Stream ``b`` is ``ids[b*R:(b+1)*R]`` with
        ``R = N // B``; the last ``N - B*R < B`` characters are not used.
    seq_len : int
        ``T``, time steps per chunk (the truncated-BPTT length).

    Notes
    -----
    An epoch is ``(R - 1) // T`` chunks; chunk ``k`` covers inputs ``kT .. kT+T-1`` of every
    row and targets one step later. The ``(R - 1) % T`` row positions after the last full chunk
    are skipped, so every batch has shape ``(T, B)``. Iterating (``next(batcher)`` or
    ``for x, y, reset in batcher``) never stops; ``epoch`` counts completed wrap-arounds.

    Raises
    ------
    RnnlabError
        When ``N < B * (T + 1)``: there is not enough text for one batch.
    """

    def __init__(self, ids, batch_size: int, seq_len: int):
        self.ids = _as_ids(ids)
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.seq_len = _positive_int(seq_len, "seq_len")
        n = self.ids.size
        need = self.batch_size * (self.seq_len + 1)
        if n < need:
            raise RnnlabError(
                f"the training text has {n:,} characters but one batch needs batch_size "
                f"{self.batch_size} x (seq_len {self.seq_len} + 1) = {need:,}: lower --batch "
                f"or --seq-len, lower --val-frac/--test-frac, or use a longer text"
            )
        self.row_len = n // self.batch_size
        self.rows = self.ids[: self.batch_size * self.row_len].reshape(self.batch_size, self.row_len)
        self.batches_per_epoch = (self.row_len - 1) // self.seq_len
        self.epoch = 0
        self.chunk = 0

    @property
    def chars_per_epoch(self) -> int:
        """Targets scored in one epoch: ``batches_per_epoch * T * B``."""
        return self.batches_per_epoch * self.seq_len * self.batch_size

    def next_batch(self) -> StreamBatch:
        """The next chunk ``(x (T,B), y (T,B), reset)``; advances the position."""
        s = self.chunk * self.seq_len
        t = self.seq_len
        x = np.ascontiguousarray(self.rows[:, s:s + t].T, dtype=np.int32)
        y = np.ascontiguousarray(self.rows[:, s + 1:s + t + 1].T, dtype=np.int32)
        reset = self.chunk == 0
        self.chunk += 1
        if self.chunk == self.batches_per_epoch:
            self.chunk = 0
            self.epoch += 1
        return StreamBatch(x, y, reset)

    def __iter__(self) -> "StreamBatcher":
        return self

    def __next__(self) -> StreamBatch:
        return self.next_batch()

    def state(self) -> dict:
        """Position as a small JSON-ready dict (with the configuration, for checking)."""
        return {
            "kind": "stream",
            "epoch": self.epoch,
            "chunk": self.chunk,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "n": int(self.ids.size),
        }

    def load_state(self, d: dict) -> None:
        """Continue from a :meth:`state` dict; RnnlabError if it belongs to another setup."""
        _check_state(
            d,
            "stream",
            {"batch_size": self.batch_size, "seq_len": self.seq_len, "n": int(self.ids.size)},
            {"epoch": 2**62, "chunk": self.batches_per_epoch},
        )
        self.epoch = d["epoch"]
        self.chunk = d["chunk"]


def stream_eval_batches(ids, batch_size: int, seq_len: int) -> Iterator[StreamBatch]:
    """Every character of a split scored exactly once, in order, in ``(T, B')`` chunks.

    The ``M = N - 1`` predictions (target ``ids[i+1]`` from inputs up to ``ids[i]``; the first
    character is never a target because nothing precedes it) are laid out as ``B'`` contiguous
    rows of ``R = ceil(M / B)`` predictions, ``B' = ceil(M / R) <= B``. Row ``b`` predicts
    targets ``b*R+1 .. b*R+R``; only the last row can be short, and its missing targets are
    ``-1``. Chunks run along the rows (``T`` steps, the last chunk shorter), so the hidden
    state carries through a row; ``reset`` is True for the first chunk only. Each row starts
    from a zero state, so use ``batch_size=1`` for the exact left-to-right likelihood.

    Parameters
    ----------
    ids : ndarray, shape (N,)
        A split's ids, ``N >= 2``.
    batch_size, seq_len : int
        Upper bound ``B`` on the rows and chunk length ``T``.

    Yields
    ------
    StreamBatch
        ``x, y`` of shape ``(T_k, B')``, ``sum(T_k) = R``; ``(y >= 0).sum()`` over all chunks is
        exactly ``N - 1``.
    """
    ids = _as_ids(ids)
    batch_size = _positive_int(batch_size, "batch_size")
    seq_len = _positive_int(seq_len, "seq_len")
    if ids.size < 2:
        raise RnnlabError(
            f"cannot evaluate a split of {ids.size} character(s): at least 2 are needed; "
            f"raise --val-frac/--test-frac or use a longer text"
        )
    return _stream_eval(ids, batch_size, seq_len)


def _stream_eval(ids: np.ndarray, batch_size: int, seq_len: int) -> Iterator[StreamBatch]:
    m = ids.size - 1
    row_len = -(-m // batch_size)
    rows = -(-m // row_len)
    row_start = np.arange(rows, dtype=np.int64) * row_len              # (B',)
    for s in range(0, row_len, seq_len):
        t = np.arange(s, min(s + seq_len, row_len), dtype=np.int64)[:, None]
        p = row_start[None, :] + t                                      # (T', B') input index
        valid = p < m
        pc = np.minimum(p, m - 1)
        x = np.where(valid, ids[pc].astype(np.int32), 0)
        y = np.where(valid, ids[pc + 1].astype(np.int32), IGNORE_INDEX)
        yield StreamBatch(x, y, s == 0)


# ---------------------------------------------------------------------------------------------
# lines mode
# ---------------------------------------------------------------------------------------------
class Ragged:
    """Variable-length id sequences stored flat: item ``i`` is ``flat[offsets[i]:offsets[i+1]]``.

    Parameters
    ----------
    flat : ndarray, shape (sum of lengths,)
        All items' ids back to back (compact dtype).
    offsets : ndarray, shape (n + 1,), int64
        Non-decreasing, ``offsets[0] == 0`` and ``offsets[-1] == flat.size``.
    """

    def __init__(self, flat, offsets):
        self.flat = _as_ids(flat)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        if (
            self.offsets.ndim != 1 or self.offsets.size < 1 or self.offsets[0] != 0
            or self.offsets[-1] != self.flat.size or np.any(np.diff(self.offsets) < 0)
        ):
            raise ValueError("offsets must be non-decreasing from 0 to flat.size")

    @classmethod
    def from_arrays(cls, items: Sequence) -> "Ragged":
        """Pack a list of 1-D integer arrays."""
        lengths = np.fromiter((len(a) for a in items), dtype=np.int64, count=len(items))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        arrays = [np.asarray(a).reshape(-1) for a in items]
        flat = np.concatenate(arrays) if arrays else np.zeros(0, np.int32)
        if flat.size == 0:
            flat = flat.astype(np.int32)
        return cls(flat, offsets)

    @property
    def lengths(self) -> np.ndarray:
        """Item lengths, shape ``(n,)``."""
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return self.offsets.size - 1

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return self.flat[self.offsets[i]:self.offsets[i + 1]]

    def take(self, idx) -> "Ragged":
        """A new Ragged of the items ``idx`` (in that order)."""
        return Ragged.from_arrays([self[int(i)] for i in np.asarray(idx).reshape(-1)])


def encode_lines(vocab: Vocab, lines: Sequence[str], unknown: str = "error", *, what: str = "the text"):
    """Encode every line with one vectorised pass; the result is stored flat.

    Parameters
    ----------
    vocab : Vocab
    lines : sequence of str
    unknown : {"error", "skip", "count"}
        As in :meth:`Vocab.encode`; dropped characters shorten their own line only.

    Returns
    -------
    Ragged
        One item per line (``(Ragged, n_unknown)`` with ``unknown="count"``).
    """
    if unknown not in ("error", "skip", "count"):
        raise ValueError(f"unknown must be 'error', 'skip' or 'count', got {unknown!r}")
    lengths = np.fromiter((len(s) for s in lines), dtype=np.int64, count=len(lines))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    text = "".join(lines)
    if unknown == "error":
        flat = vocab.encode(text, "error", what=what)
        n_unknown = 0
    else:
        flat, n_unknown, _, pos = vocab._encode(text, positions=True)
        if n_unknown:
            offsets = offsets - np.searchsorted(pos, offsets, side="left")
    ragged = Ragged(flat, offsets)
    return (ragged, n_unknown) if unknown == "count" else ragged


def _as_ragged(items) -> Ragged:
    return items if isinstance(items, Ragged) else Ragged.from_arrays(items)


def _lines_batch(r: Ragged, idx: np.ndarray, boundary: int) -> LinesBatch:
    """Pad items ``idx`` of ``r`` into one time-major batch (vectorised)."""
    starts = r.offsets[idx]                                             # (B,)
    n_chars = r.offsets[idx + 1] - starts                               # (B,)
    steps = int(n_chars.max()) + 1
    flat = r.flat if r.flat.size else np.zeros(1, np.int32)
    t = np.arange(steps, dtype=np.int64)[:, None]                       # (T, 1)
    inside = t < n_chars[None, :]                                       # (T, B) a char target
    g = flat[np.minimum(starts[None, :] + t, flat.size - 1)].astype(np.int32)  # (T, B) char t
    y = np.where(inside, g, IGNORE_INDEX)
    y[n_chars, np.arange(idx.size)] = boundary                          # EOS after the chars
    x = np.empty((steps, idx.size), dtype=np.int32)
    x[0] = boundary                                                     # BOS
    x[1:] = np.where(inside[:-1], g[:-1], 0)
    return LinesBatch(x, y, n_chars + 1)


class LinesBatcher:
    """Shuffled, padded mini-batches of items (lines), epoch after epoch, forever.

    Parameters
    ----------
    items : Ragged or sequence of 1-D int arrays, length n
        The encoded training items (may be empty arrays).
    batch_size : int
        ``B``; the last batch of an epoch holds the remaining ``n % B`` items if nonzero.
    rng : numpy.random.Generator
        Draws one permutation of the items at the start of every epoch. Give the batcher its
        own generator: ``load_state`` rewinds it to reproduce the current epoch's order.
    boundary : int
        The BOS/EOS id (the vocabulary's boundary token, 0).

    Notes
    -----
    Every item appears exactly once per epoch. ``state()`` stores the epoch, the batch position
    within it, and the generator state from which the epoch's permutation is drawn.
    """

    def __init__(self, items, batch_size: int, rng: np.random.Generator, *, boundary: int = 0):
        self.items = _as_ragged(items)
        self.batch_size = _positive_int(batch_size, "batch_size")
        if len(self.items) == 0:
            raise RnnlabError("there are no lines to train on: pass a file with one item per line")
        if not isinstance(rng, np.random.Generator):
            raise TypeError("rng must be a numpy.random.Generator")
        self.rng = rng
        self.boundary = int(boundary)
        self.batches_per_epoch = -(-len(self.items) // self.batch_size)
        self.epoch = 0
        self.position = 0
        self._perm: np.ndarray | None = None
        self._epoch_rng_state: dict | None = None

    def _start_epoch(self) -> None:
        self._epoch_rng_state = self.rng.bit_generator.state
        self._perm = self.rng.permutation(len(self.items))

    def next_batch(self) -> LinesBatch:
        """The next batch ``(x (T,B), y (T,B), lengths (B,))``; advances the position."""
        if self._perm is None:
            self._start_epoch()
        s = self.position * self.batch_size
        idx = self._perm[s:s + self.batch_size]
        self.position += 1
        if self.position == self.batches_per_epoch:
            self.position = 0
            self.epoch += 1
            self._perm = None
        return _lines_batch(self.items, idx, self.boundary)

    def __iter__(self) -> "LinesBatcher":
        return self

    def __next__(self) -> LinesBatch:
        return self.next_batch()

    def state(self) -> dict:
        """Position as a small JSON-ready dict: epoch, batch position, generator state."""
        rng_state = self._epoch_rng_state if self._perm is not None else self.rng.bit_generator.state
        return {
            "kind": "lines",
            "epoch": self.epoch,
            "position": self.position,
            "batch_size": self.batch_size,
            "n_items": len(self.items),
            "rng": _jsonable(rng_state),
        }

    def load_state(self, d: dict) -> None:
        """Continue from a :meth:`state` dict; RnnlabError if it belongs to another setup."""
        _check_state(
            d,
            "lines",
            {"batch_size": self.batch_size, "n_items": len(self.items)},
            {"epoch": 2**62, "position": self.batches_per_epoch},
        )
        try:
            self.rng.bit_generator.state = d["rng"]
        except (KeyError, TypeError, ValueError) as exc:
            raise _bad_state(f"the random generator state does not load: {exc}") from None
        self.epoch = d["epoch"]
        self.position = d["position"]
        self._perm = None
        if self.position > 0:
            self._start_epoch()


def _jsonable(obj):
    """Nested dicts/lists of Python scalars (numpy arrays and scalars converted)."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def lines_eval_batches(items, batch_size: int, *, boundary: int = 0) -> Iterator[LinesBatch]:
    """All items in order, ``batch_size`` at a time (the last batch may be smaller).

    Every item contributes ``len(chars) + 1`` scored targets (its characters and the EOS), i.e.
    ``sum(lengths)`` over the batches.
    """
    r = _as_ragged(items)
    batch_size = _positive_int(batch_size, "batch_size")
    if len(r) == 0:
        raise RnnlabError("there are no lines to evaluate: raise --val-frac/--test-frac or use more lines")

    def gen():
        for s in range(0, len(r), batch_size):
            yield _lines_batch(r, np.arange(s, min(s + batch_size, len(r))), boundary)

    return gen()
