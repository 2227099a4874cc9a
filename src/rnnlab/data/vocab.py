"""The character vocabulary: characters <-> integer ids, vectorised both ways.

A :class:`Vocab` holds the distinct characters of the training text sorted by code point. In
lines mode it also has a **boundary token** at id 0 (written ``"<eos>"`` in JSON) that marks
both the beginning and the end of an item, makemore-style; its characters then take ids
``1 .. V-1``. In stream mode there is no special token and ids are ``0 .. V-1``.

Encoding never loops over characters in Python: the text is encoded to UTF-32-LE in chunks of
:data:`CHUNK_CHARS` characters, viewed as ``uint32`` code points with ``np.frombuffer`` and
mapped through a dense lookup table (code point -> id, ``-1`` for unknown; at most
``0x110000`` int32 entries = 4.4 MB, usually far fewer). Memory beyond the result stays bounded
by one chunk, so a 100 MB text encodes in about a second.

Id dtype (:attr:`Vocab.dtype`): ``uint8`` when ``V <= 256``, ``uint16`` when ``V <= 65536``,
``int32`` otherwise — the smallest type that holds every id, so an encoded corpus costs one
byte per character for ordinary text. Batchers convert slices to ``int32`` for the models.
"""
from __future__ import annotations

import json
from typing import Iterable

import numpy as np

from ..errors import RnnlabError

__all__ = ["Vocab", "BOUNDARY_NAME", "CHUNK_CHARS"]

BOUNDARY_NAME = "<eos>"
"""How the boundary token (id 0 in lines mode) is written in JSON and shown to people."""

CHUNK_CHARS = 1 << 20
"""Characters encoded per vectorised step (4 MB of UTF-32 at a time)."""

_FORMAT = "rnnlab-vocab"
_VERSION = 1
_MAX_LISTED = 10
_UNKNOWN_MODES = ("error", "skip", "count")


def _code_points(text: str) -> np.ndarray:
    """Code points of ``text`` as a read-only ``uint32`` array, shape ``(len(text),)``."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def _list_chars(chars, counts=None) -> str:
    """``'a', 'é', '\\n'`` for up to ten characters (repr-escaped), then how many more."""
    shown = list(chars)[:_MAX_LISTED]
    parts = []
    for i, c in enumerate(shown):
        parts.append(repr(c) if counts is None else f"{c!r} (x{counts[i]:,})")
    more = len(chars) - len(shown)
    return ", ".join(parts) + (f" and {more:,} more" if more > 0 else "")


class Vocab:
    """Characters sorted by code point, optionally preceded by a boundary token at id 0.

    Parameters
    ----------
    chars : iterable of str
        Single characters; duplicates are merged and the order is by code point.
    boundary : bool
        Add the boundary token (id 0) used as begin- and end-of-item marker in lines mode.

    Attributes
    ----------
    chars : tuple of str
        The characters in id order (without the boundary token).
    boundary : bool
        Whether id 0 is the boundary token.
    size : int
        ``V``, the number of ids (characters plus the boundary token if any).
    dtype : numpy.dtype
        Id dtype of :meth:`encode` results (uint8 / uint16 / int32, see the module docstring).

    Examples
    --------
    >>> v = Vocab.from_text("hello")
    >>> v.chars, v.encode("hole").tolist(), v.decode([1, 0, 2, 2, 3])
    (('e', 'h', 'l', 'o'), [1, 3, 2, 0], 'hello')
    """

    def __init__(self, chars: Iterable[str], boundary: bool = False):
        uniq = set()
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"vocabulary entries must be single characters, got {c!r}")
            uniq.add(c)
        self.chars: tuple[str, ...] = tuple(sorted(uniq))
        self.boundary = bool(boundary)
        self._offset = 1 if self.boundary else 0
        self._cps = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        self._lut: np.ndarray | None = None
        self._stoi: dict[str, int] | None = None

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_text(cls, text: str, boundary: bool = False) -> "Vocab":
        """The vocabulary of every distinct character in ``text`` (vectorised, chunked)."""
        seen = np.zeros(0x110000, dtype=bool)
        for s in range(0, len(text), CHUNK_CHARS):
            seen[_code_points(text[s:s + CHUNK_CHARS])] = True
        cps = np.flatnonzero(seen)
        chars = str(cps.astype("<u4").tobytes(), "utf-32-le", "surrogatepass")
        return cls(chars, boundary=boundary)

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> "Vocab":
        """The lines-mode vocabulary (with the boundary token) of the characters in ``lines``."""
        return cls.from_text("".join(lines), boundary=True)

    # -- basic properties -----------------------------------------------------------------
    @property
    def size(self) -> int:
        """``V``: number of ids, the boundary token included."""
        return len(self.chars) + self._offset

    def __len__(self) -> int:
        return self.size

    @property
    def dtype(self) -> np.dtype:
        """Smallest id dtype: uint8 (V <= 256), uint16 (V <= 65536), else int32."""
        v = self.size
        return np.dtype(np.uint8 if v <= 256 else np.uint16 if v <= 65536 else np.int32)

    @property
    def bos(self) -> int | None:
        """Id of the begin-of-item marker (the boundary token, 0), or None in stream mode."""
        return 0 if self.boundary else None

    @property
    def eos(self) -> int | None:
        """Id of the end-of-item marker (the boundary token, 0), or None in stream mode."""
        return 0 if self.boundary else None

    @property
    def tokens(self) -> list[str]:
        """Display form of every id: ``"<eos>"`` for the boundary token, else the character."""
        return ([BOUNDARY_NAME] if self.boundary else []) + list(self.chars)

    def id_of(self, ch: str) -> int:
        """The id of character ``ch``; KeyError if it is not in the vocabulary."""
        if self._stoi is None:
            self._stoi = {c: i + self._offset for i, c in enumerate(self.chars)}
        return self._stoi[ch]

    def __contains__(self, ch) -> bool:
        try:
            self.id_of(ch)
        except (KeyError, TypeError):
            return False
        return True

    def __eq__(self, other) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return self.chars == other.chars and self.boundary == other.boundary

    def __hash__(self) -> int:
        return hash((self.chars, self.boundary))

    def __repr__(self) -> str:
        shown = "".join(self.chars[:40])
        more = "..." if len(self.chars) > 40 else ""
        return f"Vocab(size={self.size}, boundary={self.boundary}, chars={shown!r}{more})"

    # -- encoding -------------------------------------------------------------------------
    def _table(self) -> np.ndarray:
        """Dense lookup: code point -> id (int32), -1 for unknown; last entry is a sentinel."""
        if self._lut is None:
            top = int(self._cps[-1]) + 1 if self._cps.size else 0
            lut = np.full(top + 1, -1, dtype=np.int32)
            lut[self._cps] = np.arange(self._offset, self._offset + self._cps.size, dtype=np.int32)
            self._lut = lut
        return self._lut

    def _encode(self, text: str, *, collect: bool = False, positions: bool = False):
        """Core of :meth:`encode`: known ids in order, plus what was dropped.

        Returns ``(ids, n_unknown, unknown, unknown_positions)``; ``unknown`` maps each
        unknown character to its count (only when ``collect``), ``unknown_positions`` holds the
        character offsets in ``text`` of the dropped characters (only when ``positions``).
        """
        n = len(text)
        lut = self._table()
        sentinel = lut.size - 1
        out = np.empty(n, dtype=self.dtype)
        w = 0
        n_unknown = 0
        unknown: dict[int, int] = {}
        pos_parts: list[np.ndarray] = []
        for s in range(0, n, CHUNK_CHARS):
            cps = _code_points(text[s:s + CHUNK_CHARS])
            ids = lut[np.minimum(cps, sentinel)]
            bad = ids < 0
            k = int(np.count_nonzero(bad))
            if k:
                n_unknown += k
                if collect:
                    u, c = np.unique(cps[bad], return_counts=True)
                    for cp, cnt in zip(u.tolist(), c.tolist()):
                        unknown[cp] = unknown.get(cp, 0) + cnt
                if positions:
                    pos_parts.append(np.flatnonzero(bad) + s)
                ids = ids[~bad]
            out[w:w + ids.size] = ids
            w += ids.size
        if w < n:
            out = out[:w].copy()
        unk = {chr(cp): cnt for cp, cnt in sorted(unknown.items())} if collect else None
        pos = (np.concatenate(pos_parts) if pos_parts else np.zeros(0, np.int64)) if positions else None
        return out, n_unknown, unk, pos

    def encode(self, text: str, unknown: str = "error", *, what: str = "the text"):
        """Character ids of ``text``, vectorised (no Python loop per character).

        Parameters
        ----------
        text : str
            Any string; characters outside the vocabulary are handled by ``unknown``.
        unknown : {"error", "skip", "count"}
            ``"error"``: raise :class:`RnnlabError` listing up to ten unseen characters
            (repr-escaped, with counts) — what sampling does with a priming text.
            ``"skip"``: drop unknown characters. ``"count"``: drop them and also return how many
            there were — what evaluation reports.
        what : str
            How the error message refers to ``text`` (e.g. ``"the priming text"``).

        Returns
        -------
        ids : ndarray, shape (N,), dtype :attr:`dtype`
            ``N = len(text)`` minus the dropped characters.
        n_unknown : int
            Only with ``unknown="count"``: the number of dropped characters.
        """
        if unknown not in _UNKNOWN_MODES:
            raise ValueError(f"unknown must be one of {_UNKNOWN_MODES}, got {unknown!r}")
        ids, n_unknown, unk, _ = self._encode(text, collect=unknown == "error")
        if unknown == "error" and n_unknown:
            raise RnnlabError(
                f"{what} has {n_unknown:,} character(s) that the model never saw in training "
                f"({len(unk):,} distinct: {_list_chars(list(unk), list(unk.values()))}): "
                f"remove them, or train on a text that contains them"
            )
        if unknown == "count":
            return ids, n_unknown
        return ids

    def unknown_chars(self, text: str) -> dict[str, int]:
        """Characters of ``text`` not in the vocabulary -> their counts, by code point."""
        return self._encode(text, collect=True)[2]

    def decode(self, ids, boundary_text: str = "\n") -> str:
        """The string for a sequence of ids (vectorised).

        Parameters
        ----------
        ids : array_like of int, shape (N,)
            Ids in ``[0, V)``.
        boundary_text : str
            What the boundary token (id 0 in lines mode) becomes; ``"\\n"`` puts each sampled
            item on its own line, ``""`` drops it.

        Returns
        -------
        str
        """
        ids = np.asarray(ids).reshape(-1)
        if ids.size == 0:
            return ""
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"ids must be integers, got dtype {ids.dtype}")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.size:
            raise ValueError(f"ids must lie in [0, {self.size}), got values in [{lo}, {hi}]")
        table = np.concatenate([np.zeros(self._offset, np.uint32), self._cps]).astype("<u4")
        if not self.boundary:
            return str(table[ids].tobytes(), "utf-32-le", "surrogatepass")
        cuts = np.flatnonzero(ids == 0)
        if cuts.size == 0:
            return str(table[ids].tobytes(), "utf-32-le", "surrogatepass")
        if len(boundary_text) == 1:
            table[0] = ord(boundary_text)
            return str(table[ids].tobytes(), "utf-32-le", "surrogatepass")
        pieces = np.split(ids, cuts)
        parts = [str(table[pieces[0]].tobytes(), "utf-32-le", "surrogatepass")]
        parts += [str(table[p[1:]].tobytes(), "utf-32-le", "surrogatepass") for p in pieces[1:]]
        return boundary_text.join(parts)

    # -- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready form: ``{"format": "rnnlab-vocab", "version": 1, "tokens": [...]}``.

        ``tokens[i]`` is the display form of id ``i``: ``"<eos>"`` for the boundary token, else
        the single character.
        """
        return {"format": _FORMAT, "version": _VERSION, "tokens": self.tokens}

    def to_json(self) -> str:
        """:meth:`to_dict` as a one-line JSON string (non-ASCII characters kept readable)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, obj, source: str = "the vocabulary") -> "Vocab":
        """Rebuild from :meth:`to_dict` output, validating every field.

        Raises
        ------
        RnnlabError
            On a non-object, missing or unexpected fields, a wrong format/version, tokens that
            are not single-character strings, a misplaced ``"<eos>"``, duplicates, or tokens not
            sorted by code point. ``source`` names where the data came from in the message.
        """
        fix = "the file is damaged or not an rnnlab vocabulary; retrain or use the original file"
        if not isinstance(obj, dict):
            raise RnnlabError(f"{source}: expected a JSON object, got {type(obj).__name__}; {fix}")
        want = {"format", "version", "tokens"}
        missing = sorted(want - obj.keys())
        extra = sorted(map(str, obj.keys() - want))
        if missing:
            raise RnnlabError(f"{source}: missing field(s) {', '.join(missing)}; {fix}")
        if extra:
            raise RnnlabError(f"{source}: unexpected field(s) {', '.join(map(repr, extra))}; {fix}")
        if obj["format"] != _FORMAT:
            raise RnnlabError(f"{source}: format is {obj['format']!r}, expected {_FORMAT!r}; {fix}")
        version = obj["version"]
        if not isinstance(version, int) or isinstance(version, bool) or version != _VERSION:
            raise RnnlabError(
                f"{source}: vocabulary version {version!r} is not supported (this rnnlab reads "
                f"version {_VERSION}); use the rnnlab version that wrote it"
            )
        tokens = obj["tokens"]
        if not isinstance(tokens, list):
            raise RnnlabError(f"{source}: tokens must be a list, got {type(tokens).__name__}; {fix}")
        boundary = bool(tokens) and tokens[0] == BOUNDARY_NAME
        chars = tokens[1:] if boundary else tokens
        for i, t in enumerate(chars, start=int(boundary)):
            if not isinstance(t, str):
                raise RnnlabError(f"{source}: token {i} is {type(t).__name__} {t!r}, expected a string; {fix}")
            if t == BOUNDARY_NAME:
                raise RnnlabError(f"{source}: {BOUNDARY_NAME!r} may only be token 0, found at {i}; {fix}")
            if len(t) != 1:
                raise RnnlabError(f"{source}: token {i} is {t!r}, expected a single character; {fix}")
        if not chars:
            raise RnnlabError(f"{source}: the vocabulary has no characters; {fix}")
        seen: set[str] = set()
        dups = [c for c in chars if c in seen or seen.add(c)]
        if dups:
            raise RnnlabError(f"{source}: duplicate character(s) {_list_chars(dups)}; {fix}")
        cps = [ord(c) for c in chars]
        if cps != sorted(cps):
            raise RnnlabError(f"{source}: characters are not sorted by code point; {fix}")
        return cls(chars, boundary=boundary)

    @classmethod
    def from_json(cls, data, source: str = "the vocabulary") -> "Vocab":
        """Rebuild from a JSON string (or an already-parsed dict); see :meth:`from_dict`."""
        if isinstance(data, (str, bytes, bytearray)):
            try:
                data = json.loads(data)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise RnnlabError(
                    f"{source}: not valid JSON ({str(exc).splitlines()[0]}); the file is damaged "
                    f"or not an rnnlab vocabulary"
                ) from None
        return cls.from_dict(data, source=source)
