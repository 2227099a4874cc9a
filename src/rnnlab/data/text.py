"""Reading a training text and cutting it into train / validation / test splits.

Two corpus shapes feed the char-LM:

- **stream mode** — the file is one long character stream (Shakespeare, source code). It is
  encoded once into a compact integer array and cut into contiguous pieces (:func:`split_stream`):
  the validation and test splits are either the file's tails or, for ``rnnlab train``, pieces
  spread through the whole file, so that training covers all of it.
- **lines mode** — every non-empty line is an independent item (names, words), makemore-style
  (:func:`read_lines`, :func:`split_lines`): the held-out lines are drawn at random with an
  explicit ``np.random.Generator``.

Every problem a user can cause (a missing, empty, binary or non-UTF-8 file; a split that would be
too small) raises :class:`~rnnlab.errors.RnnlabError` with a one-line message naming the file, the
problem and what to do.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from ..errors import RnnlabError

__all__ = ["read_text", "read_lines", "split_stream", "split_lines", "spread_pieces", "Split", "SPLITS"]

_BOM = b"\xef\xbb\xbf"
_SNIFF_BYTES = 1 << 16          # bytes inspected by the "is this binary?" heuristics
_MAX_CONTROL_FRACTION = 0.10    # more control bytes than this in the sample -> binary
_MAX_INVALID_FRACTION = 0.30    # more undecodable chars than this in the sample ...
_MIN_WHITESPACE_FRACTION = 0.03  # ... and fewer whitespace bytes than this -> binary
_MIN_SPLIT_CHARS = 2            # one input and one target: the least a split can be scored on


def _display(path) -> str:
    """``path`` as it should appear in a one-line message (repr-escaped if it has odd chars)."""
    s = os.fspath(path)
    if isinstance(s, bytes):
        s = os.fsdecode(s)
    return s if s.isprintable() else repr(s)


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def read_text(path) -> str:
    """Read a UTF-8 text file for training, with one-line errors for every user problem.

    A UTF-8 byte-order mark is stripped and ``\\r\\n`` line endings become ``\\n``. Any UTF-8
    text is accepted (Chinese, emoji, ...). The file is read as bytes and decoded once; no
    per-character Python objects are built, so a 100 MB file costs roughly the bytes plus the
    decoded string.

    Parameters
    ----------
    path : str or os.PathLike
        The file to read.

    Returns
    -------
    str
        The decoded text, never empty and never whitespace-only.

    Raises
    ------
    RnnlabError
        When the file is missing, is a directory, cannot be read (permissions), is empty or
        whitespace-only, looks binary (NUL bytes, mostly control bytes, a UTF-16 file) or is not
        valid UTF-8 (the message gives the byte offset and line of the first bad byte).
    """
    name = _display(path)
    is_dir = f"{name} is a directory, not a text file: pass the path of a UTF-8 text file"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise RnnlabError(f"{name}: no such file; check the path (and the current directory)") from None
    except IsADirectoryError:
        raise RnnlabError(is_dir) from None
    except PermissionError:
        if _is_dir(path):  # Windows reports a directory as a permission problem
            raise RnnlabError(is_dir) from None
        raise RnnlabError(
            f"{name}: permission denied when reading it; make the file readable (chmod +r) or copy it"
        ) from None
    except OSError as exc:
        raise RnnlabError(f"{name}: cannot be read ({exc.strerror or exc}); check the file and try again") from None

    if not data:
        raise RnnlabError(f"{name} is empty (0 bytes): pass a file that contains some text")

    reason = _binary_reason(data)
    if reason:
        raise RnnlabError(f"{name} {reason}")

    skip = len(_BOM) if data.startswith(_BOM) else 0
    try:
        text = str(memoryview(data)[skip:], "utf-8")
    except UnicodeDecodeError as exc:
        offset = exc.start + skip
        line = data.count(b"\n", 0, offset) + 1
        raise RnnlabError(
            f"{name} is not valid UTF-8: byte 0x{data[offset]:02x} at byte offset {offset:,} "
            f"(line {line:,}) cannot be decoded; re-save the file as UTF-8 "
            f"(e.g. iconv -f latin1 -t utf-8 in.txt > out.txt)"
        ) from None
    del data

    if "\r\n" in text:
        text = text.replace("\r\n", "\n")
    if not text or text.isspace():
        raise RnnlabError(
            f"{name} contains only whitespace ({len(text):,} characters): pass a file that contains some text"
        )
    return text


def _is_dir(path) -> bool:
    try:
        return Path(path).is_dir()
    except OSError:
        return False


def _binary_reason(data: bytes) -> str | None:
    """Why ``data`` looks like a binary (non-text) file, or ``None`` when it looks like text."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "is UTF-16 encoded (it starts with a UTF-16 byte-order mark): re-save it as UTF-8"
    nul = data.find(b"\x00")
    if nul >= 0:
        return (
            f"looks like a binary file, not text (NUL byte at byte offset {nul:,}): pass a plain "
            f"UTF-8 text file (re-save UTF-16/UTF-32 text as UTF-8)"
        )
    sample = np.frombuffer(data, dtype=np.uint8, count=min(len(data), _SNIFF_BYTES))
    control = (sample < 32) & (sample != 9) & (sample != 10) & (sample != 12) & (sample != 13)
    control |= sample == 127
    frac = float(control.mean())
    if frac > _MAX_CONTROL_FRACTION:
        return (
            f"looks like a binary file, not text ({frac:.0%} control bytes in its first "
            f"{sample.size:,} bytes): pass a plain UTF-8 text file"
        )
    # Mostly undecodable bytes and hardly any spaces or line breaks: not text in any encoding
    # (text in a legacy encoding such as Latin-1 still has whitespace; it gets the UTF-8 error).
    decoded = str(memoryview(data)[: sample.size], "utf-8", "replace")
    # A multi-byte character cut by the sample boundary yields at most one spurious U+FFFD.
    bad = max(decoded.count("\ufffd") - data[: sample.size].count("\ufffd".encode()) - 1, 0)
    white = np.count_nonzero((sample == 32) | (sample == 9) | (sample == 10) | (sample == 13))
    if decoded and bad / len(decoded) > _MAX_INVALID_FRACTION and white / sample.size < _MIN_WHITESPACE_FRACTION:
        return (
            f"looks like a binary file, not text ({bad / len(decoded):.0%} of its first "
            f"{sample.size:,} bytes are not UTF-8): pass a plain UTF-8 text file"
        )
    return None


def read_lines(text: str) -> list[str]:
    """The non-empty lines of ``text``, each stripped of surrounding whitespace (lines mode).

    Parameters
    ----------
    text : str
        Text as returned by :func:`read_text` (``\\n`` line endings).

    Returns
    -------
    list of str
        One item per non-blank line, in file order. Only ``\\n`` separates lines (not the other
        Unicode line separators), so what a user sees as one line is one item.
    """
    return [s for s in (line.strip() for line in text.split("\n")) if s]


# ---------------------------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------------------------
class Split(NamedTuple):
    """Train / validation / test parts of a corpus; unpacks as ``train, val, test``.

    In stream mode each part is a 1-D integer array of character ids; in lines mode each part is
    a list of items (strings or 1-D id arrays).
    """

    train: Any
    val: Any
    test: Any

    @property
    def sizes(self) -> tuple[int, int, int]:
        """``len`` of each part: characters in stream mode, items (lines) in lines mode."""
        return (len(self.train), len(self.val), len(self.test))

    @property
    def char_counts(self) -> tuple[int, int, int]:
        """Number of characters in each part (for lines: summed over the items)."""
        return tuple(_n_chars(p) for p in self)  # type: ignore[return-value]

    def describe(self) -> str:
        """One line for the CLI, e.g. ``"train 90,000 / val 5,000 / test 5,000 characters"``."""
        tr, va, te = self.char_counts
        text = f"train {tr:,} / val {va:,} / test {te:,} characters"
        if not isinstance(self.train, np.ndarray):
            a, b, c = self.sizes
            text += f" (lines: {a:,} / {b:,} / {c:,})"
        return text


def _n_chars(part) -> int:
    if isinstance(part, np.ndarray):
        return int(part.size)
    return int(sum(len(item) for item in part))


def _check_fracs(val_frac: float, test_frac: float) -> None:
    for label, f in (("--val-frac", val_frac), ("--test-frac", test_frac)):
        if not isinstance(f, (int, float)) or isinstance(f, bool) or not math.isfinite(f) or not 0 <= f < 1:
            raise RnnlabError(f"{label} must be a number in [0, 1), got {f!r}: e.g. 0.05")
    if val_frac + test_frac >= 1:
        raise RnnlabError(
            f"--val-frac {val_frac} + --test-frac {test_frac} leaves nothing to train on: keep their sum below 1 (e.g. 0.05 each)"
        )


def _split_sizes(n: int, val_frac: float, test_frac: float, unit: str, minimum: int) -> tuple[int, int, int]:
    """Sizes of train/val/test for ``n`` units; RnnlabError when a requested part is too small."""
    _check_fracs(val_frac, test_frac)
    n_val = int(round(n * val_frac))
    n_test = int(round(n * test_frac))
    for label, frac, k in (("validation", val_frac, n_val), ("test", test_frac, n_test)):
        key = "--val-frac" if label == "validation" else "--test-frac"
        if frac > 0 and k < minimum:
            raise RnnlabError(
                f"{key} {frac} of {n:,} {unit}s gives a {label} split of {k} {unit}(s), too small to "
                f"measure (at least {minimum} needed): raise {key}, use a longer text, or set {key} 0"
            )
    n_train = n - n_val - n_test
    if n_train < minimum:
        raise RnnlabError(
            f"the {n:,}-{unit} corpus leaves {n_train} {unit}(s) for training after the validation "
            f"({n_val}) and test ({n_test}) splits: lower --val-frac/--test-frac or use a longer text"
        )
    return n_train, n_val, n_test


SPLITS = ("spread", "tail")
"""How :func:`split_stream` places the validation and test characters (``--split``)."""

PIECE_CHARS = 2000
"""The least characters one piece of a spread validation or test split holds."""

MAX_PIECES = 20
"""A spread split cuts the text into at most this many pieces."""


def spread_pieces(n: int, val_frac: float, test_frac: float) -> int:
    """Pieces a spread split of ``n`` characters uses: as many as keep each piece of the smaller
    requested split at :data:`PIECE_CHARS` or more, at most :data:`MAX_PIECES`, at least 1 (a
    short text keeps its contiguous tails)."""
    fracs = [f for f in (val_frac, test_frac) if f > 0]
    if not fracs:
        return 1
    return max(1, min(MAX_PIECES, int(n * min(fracs)) // PIECE_CHARS))


def split_stream(ids: np.ndarray, val_frac: float = 0.05, test_frac: float = 0.05, pieces: int = 1) -> Split:
    """Cut an encoded stream into train, validation and test parts.

    ``pieces=1`` (the tail layout): contiguous parts, train is the head, then val, then test.
    ``pieces=K`` (the spread layout; :func:`spread_pieces` says how many a text gets): the text is
    cut into ``K`` equal pieces, each piece is ``[train | val | test]`` in the same proportions,
    and each part is its pieces joined in order. The training split then covers the whole text (the end of a file is often a
    different book or play than its head; a tail split never trains on it), and validation and
    test sample the whole text instead of its last pages::

        tail:    [ train .......................... | val | test ]
        spread:  [ train | v | t ][ train | v | t ] ... (K pieces)

    Parameters
    ----------
    ids : ndarray, shape (N,)
        Character ids of the whole text.
    val_frac, test_frac : float
        Fractions of ``N`` for the validation and test parts (``round(N * frac)`` characters
        each, either layout); ``0`` disables a split (its part is empty).
    pieces : int
        ``K >= 1``.

    Returns
    -------
    Split
        ``(train, val, test)`` of lengths ``N - n_val - n_test``, ``n_val``, ``n_test`` (views of
        ``ids`` for one piece; copies otherwise. ``Split.sizes`` / ``Split.describe()``
        give the counts for the CLI).

    Raises
    ------
    RnnlabError
        When a fraction is out of range, a requested split would have fewer than 2 characters
        (one input + one target) or the training head would have fewer than 2.
    """
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
    if pieces < 1:
        raise ValueError(f"pieces must be >= 1, got {pieces}")
    n = ids.size
    n_train, n_val, _ = _split_sizes(n, val_frac, test_frac, "character", _MIN_SPLIT_CHARS)
    k = pieces
    if k == 1:
        return Split(ids[:n_train], ids[n_train:n_train + n_val], ids[n_train + n_val:])
    bounds = [n * i // k for i in range(k + 1)]  # piece i is ids[bounds[i]:bounds[i + 1]]
    vals = [n_val * (i + 1) // k - n_val * i // k for i in range(k)]  # characters of val per piece
    tests = [(n - n_train - n_val) * (i + 1) // k - (n - n_train - n_val) * i // k for i in range(k)]
    parts = ([], [], [])
    for i in range(k):
        a, b = bounds[i], bounds[i + 1]
        cut_v = b - vals[i] - tests[i]  # [a, cut_v) train, [cut_v, cut_t) val, [cut_t, b) test
        cut_t = b - tests[i]
        for part, (lo, hi) in zip(parts, ((a, cut_v), (cut_v, cut_t), (cut_t, b))):
            part.append(ids[lo:hi])
    return Split(*(np.concatenate(p) for p in parts))


def split_lines(
    items: Sequence, val_frac: float, test_frac: float, rng: np.random.Generator
) -> Split:
    """Hold out random lines for validation and test (lines mode).

    Parameters
    ----------
    items : sequence, length N
        The items (lines as strings, or encoded 1-D arrays).
    val_frac, test_frac : float
        Fractions of ``N`` held out (``round(N * frac)`` items each; ``0`` disables a split).
    rng : numpy.random.Generator
        Draws one permutation of ``N``; the same generator state gives the same split.

    Returns
    -------
    Split
        ``(train, val, test)`` as lists; each keeps the items' original file order.

    Raises
    ------
    RnnlabError
        When a fraction is out of range, a requested split would be empty, or no item is left
        for training.
    """
    n = len(items)
    if n == 0:
        raise RnnlabError("there are no non-empty lines to train on: pass a file with one item per line")
    _, n_val, n_test = _split_sizes(n, val_frac, test_frac, "line", 1)
    perm = rng.permutation(n)
    val_idx = np.sort(perm[:n_val])
    test_idx = np.sort(perm[n_val:n_val + n_test])
    train_idx = np.sort(perm[n_val + n_test:])
    return Split(
        [items[i] for i in train_idx], [items[i] for i in val_idx], [items[i] for i in test_idx]
    )
