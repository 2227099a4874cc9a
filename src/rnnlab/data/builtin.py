"""A built-in training text that every machine with Python has: its standard library's source.

:func:`builtin_corpus` concatenates the source files of a fixed, sorted list of pure-Python
standard-library modules (located with ``importlib.util.find_spec``; modules that are missing
or have no readable ``.py`` file are skipped). Nothing is downloaded and nothing is imported
except the parent packages of dotted names (``json``). The result is deterministic for a given
Python installation: the same modules, in the same order, cut at the same place.
"""
from __future__ import annotations

import importlib.util
import os
import sys

from ..errors import RnnlabError

__all__ = ["builtin_corpus", "BUILTIN_MODULES", "DEFAULT_MAX_CHARS"]

BUILTIN_MODULES: tuple[str, ...] = (
    "abc", "argparse", "ast", "base64", "bisect", "calendar", "codecs", "collections",
    "colorsys", "configparser", "contextlib", "copy", "csv", "dataclasses", "difflib", "enum",
    "fnmatch", "fractions", "functools", "getopt", "glob", "heapq", "json", "json.decoder",
    "json.encoder", "json.scanner", "json.tool", "keyword", "linecache", "numbers", "operator",
    "optparse", "os", "pprint", "queue", "random", "shlex", "shutil", "string", "textwrap",
    "tokenize", "traceback", "types", "warnings", "weakref",
)
"""Modules whose source makes up the corpus, in this (sorted) order: about 1.2 MB on 3.11."""

DEFAULT_MAX_CHARS = 1_500_000
"""Default cap on the corpus length in characters."""


def _source_path(name: str) -> str | None:
    """Path of the ``.py`` source of module ``name``, or None when there is none to read."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    candidates = [spec.origin]
    # Frozen stdlib modules (abc, codecs, os on 3.11+) keep their source path here.
    candidates.append(getattr(getattr(spec, "loader_state", None), "filename", None))
    for path in candidates:
        if isinstance(path, str) and path.endswith(".py") and os.path.isfile(path):
            return path
    return None


def _read_source(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return text.replace("\r\n", "\n") if "\r\n" in text else text


def builtin_corpus(max_chars: int = DEFAULT_MAX_CHARS) -> tuple[str, str]:
    """The standard-library source corpus and a one-line description of it.

    Parameters
    ----------
    max_chars : int
        Cap on the length; the text is cut at the last line break before the cap (or at the
        cap itself when there is none).

    Returns
    -------
    text : str
        The module sources in :data:`BUILTIN_MODULES` order, separated by a blank line.
    description : str
        E.g. ``"Python 3.11.7 standard-library source: 45 modules (abc ... weakref), 1,203,456
        characters"``.

    Raises
    ------
    RnnlabError
        When ``max_chars`` is not positive or no module source can be read.
    """
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
        raise RnnlabError(f"the built-in corpus size must be a positive number of characters, got {max_chars!r}")
    parts: list[str] = []
    used: list[str] = []
    total = 0
    for name in BUILTIN_MODULES:
        if total >= max_chars:
            break
        path = _source_path(name)
        text = _read_source(path) if path else None
        if not text:
            continue
        if parts:
            text = "\n\n" + text
        parts.append(text)
        used.append(name)
        total += len(text)
    if not parts:
        raise RnnlabError(
            "the built-in corpus is unavailable: no Python standard-library source files could be "
            "read on this machine; pass a text file instead"
        )
    corpus = "".join(parts)
    if len(corpus) > max_chars:
        cut = corpus.rfind("\n", 0, max_chars)
        corpus = corpus[: cut + 1] if cut > 0 else corpus[:max_chars]
    version = ".".join(map(str, sys.version_info[:3]))
    listed = ", ".join(used) if len(used) <= 6 else f"{used[0]} ... {used[-1]}"
    description = (
        f"Python {version} standard-library source: {len(used)} modules ({listed}), "
        f"{len(corpus):,} characters"
    )
    return corpus, description
