"""Named properties of a text, per character, and the units that track them.

A property is the value of some simple fact about the text *after reading* character ``t`` —
the moment the hidden state ``h_t`` describes — so every property is causal (it depends on
characters ``0..t`` only), as the state it is compared with. Binary properties are 0/1, the
others counts:

========================  ============================================================================
``in_quotes``             inside "..." or '...' (an apostrophe between two letters is not a quote,
                          unless the letters before it are a string prefix: f'...', rb'...'; the
                          opening quote is inside, the closing one outside; ``\\n`` ends a '...')
``bracket_depth``         nesting depth of ( [ { after this character (never below 0)
``in_brackets``           bracket_depth > 0
``column``                characters since the last newline: the position in the line
``after_newline``         the character is a newline, so the next one starts a line
``word_start``            the first letter of a word (a letter after a non-letter)
``in_word``               a letter, digit or underscore
``indentation``           leading spaces of the current line (a tab counts 4) seen so far
``in_indent``             part of a line's leading whitespace
``in_comment``            from a # outside quotes to the end of the line
``uppercase``             an uppercase letter
========================  ============================================================================

The ranking correlates every unit's activation ``a (T,)`` with every property ``p (T,)``
(Pearson's r; for a binary property that is the point-biserial correlation)::

    r = sum_t (a_t - mean a)(p_t - mean p) / (T std(a) std(p))

A property that is constant over the text (no brackets in it, say) has no correlation: its
column is NaN and it is reported as absent. Shapes: ``T`` characters, ``N`` units, ``P`` properties.
"""
from __future__ import annotations

import numpy as np

PROPERTIES: dict[str, str] = {
    "in_quotes": "inside \"...\" or '...'",
    "bracket_depth": "nesting depth of ( [ {",
    "in_brackets": "inside ( ), [ ] or { }",
    "column": "position in the line",
    "after_newline": "a newline (the next character starts a line)",
    "word_start": "the first letter of a word",
    "in_word": "inside a word (letter, digit, _)",
    "indentation": "indentation of the current line",
    "in_indent": "in a line's leading whitespace",
    "in_comment": "inside a # comment",
    "uppercase": "an uppercase letter",
}
"""Every property, with the phrase the report shows for it."""

BINARY = ("in_quotes", "in_brackets", "after_newline", "word_start", "in_word", "in_indent", "in_comment", "uppercase")
"""The properties that are 0/1."""

_OPEN, _CLOSE = set("([{"), set(")]}")


def _is_letter(ch: str) -> bool:
    return ch.isalpha()


_PREFIXES = {"f", "r", "b", "u", "rb", "br", "fr", "rf"}


def _string_prefix(chars: list, t: int) -> bool:
    """Whether the letters just before ``chars[t]`` are a whole word that is a Python string
    prefix (``f'...'``, ``rb'...'``): then a ``'`` between letters opens a string."""
    j = t
    while j > 0 and t - j < 3 and chars[j - 1].isalnum():
        j -= 1
    word = "".join(chars[j:t]).lower()
    return word in _PREFIXES and (j == 0 or not (chars[j - 1].isalnum() or chars[j - 1] == "_"))


def text_properties(chars) -> dict[str, np.ndarray]:
    """``{name: (T,) float64}`` for every property of :data:`PROPERTIES`, for the characters
    ``chars`` (a string, or a sequence of one-character strings)."""
    chars = list(chars)
    T = len(chars)
    out = {name: np.zeros(T) for name in PROPERTIES}
    quote = None  # the quote character of the string we are in
    depth = 0
    col = 0
    indent, at_line_start = 0, True
    comment = False
    prev = "\n"
    for t, ch in enumerate(chars):
        nxt = chars[t + 1] if t + 1 < T else ""
        # quotes, comments (a # inside a string is no comment)
        if ch == "\n":
            comment = False
            if quote == "'":
                quote = None
        if quote is None and not comment:
            if ch == '"':
                quote = '"'
            elif ch == "'" and not (_is_letter(prev) and _is_letter(nxt) and not _string_prefix(chars, t)):
                quote = "'"
            elif ch == "#":
                comment = True
            inside = quote is not None
        else:
            if ch == quote:
                quote = None
            inside = quote is not None
        out["in_quotes"][t] = inside
        out["in_comment"][t] = comment
        # brackets (outside quotes and comments)
        if quote is None and not comment and not inside:
            if ch in _OPEN:
                depth += 1
            elif ch in _CLOSE:
                depth = max(depth - 1, 0)
        out["bracket_depth"][t] = depth
        # lines and indentation
        if ch == "\n":
            col, indent, at_line_start = 0, 0, True
        else:
            col += 1
            if at_line_start and ch in " \t":
                indent += 4 if ch == "\t" else 1
                out["in_indent"][t] = 1
            else:
                at_line_start = False
        out["column"][t] = col
        out["indentation"][t] = indent
        out["after_newline"][t] = ch == "\n"
        # words
        word = ch.isalnum() or ch == "_"
        out["in_word"][t] = word
        out["word_start"][t] = _is_letter(ch) and not (prev.isalnum() or prev == "_")
        out["uppercase"][t] = ch.isupper()
        prev = ch
    out["in_brackets"] = (out["bracket_depth"] > 0).astype(np.float64)
    return out


def correlations(acts: np.ndarray, props: np.ndarray) -> np.ndarray:
    """Pearson's r of every column of ``acts (T, N)`` with every column of ``props (T, P)``:
    ``(N, P)``, NaN where either column is constant."""
    a = np.asarray(acts, np.float64)
    p = np.asarray(props, np.float64)
    if a.ndim != 2 or p.ndim != 2 or a.shape[0] != p.shape[0]:
        raise ValueError(f"acts (T, N) and props (T, P) must share T, got {a.shape} and {p.shape}")
    T = a.shape[0]
    a = a - a.mean(axis=0)
    p = p - p.mean(axis=0)
    sa = np.sqrt((a * a).sum(axis=0))  # (N,)
    sp = np.sqrt((p * p).sum(axis=0))  # (P,)
    tiny = 1e-9 * max(T, 1) ** 0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a.T @ p) / np.outer(sa, sp)  # (N, P)
    r[sa <= tiny, :] = np.nan
    r[:, sp <= tiny] = np.nan
    return np.clip(r, -1.0, 1.0)


def rank_units(groups: dict, props: dict[str, np.ndarray], top: int = 5) -> dict[str, list[dict]]:
    """The ``top`` units per property by ``|r|``.

    Parameters
    ----------
    groups : dict
        ``{(layer, quantity): (T, H) activations}``.
    props : dict
        ``{name: (T,) values}`` (see :func:`text_properties`).

    Returns
    -------
    dict
        ``{name: [{"layer", "q", "unit", "r"}, ...]}``, best first; an empty list for a property
        that is constant over the text.
    """
    names = list(props)
    P = np.stack([props[n] for n in names], axis=1)  # (T, P)
    rows, rs = [], []
    for (layer, q), a in groups.items():
        rs.append(correlations(a, P))  # (H, P)
        rows += [(layer, q, u) for u in range(a.shape[1])]
    R = np.concatenate(rs, axis=0)  # (N, P)
    out = {}
    for j, name in enumerate(names):
        col = R[:, j]
        if np.all(np.isnan(col)):
            out[name] = []
            continue
        mag = np.where(np.isnan(col), -1.0, np.abs(col))
        best = np.argsort(-mag, kind="stable")[:top]
        out[name] = [{"layer": rows[i][0], "q": rows[i][1], "unit": rows[i][2], "r": float(col[i])}
                     for i in best if mag[i] >= 0]
    return out
