"""An interpolated Kneser-Ney character n-gram model: the baseline an RNN's loss is set against.

Counts come from a training sequence of ids ``x (N,)``; an ``m``-gram ``(a_1 .. a_m)`` is the
integer key ``sum_j a_j V^(m-j)`` (so every order's table is one sorted int64 array, looked up
with ``searchsorted``; the order is capped where ``V^order`` would overflow 62 bits).

Interpolated Kneser-Ney (Chen & Goodman 1998, one discount per order)::

    p_m(w | h) = max(c_m(h w) - D_m, 0) / c_m(h .)  +  D_m N_m(h .) / c_m(h .)  p_{m-1}(w | h')
    p_m(w | h) = p_{m-1}(w | h')                           when the context h was never seen
    p_0(w)     = 1 / V

where ``h'`` drops the oldest character of ``h``; ``c_m`` are raw counts at the highest order and
continuation counts ``N_1+(. h w)`` (how many distinct characters precede ``h w``) below it;
``c_m(h .) = sum_w c_m(h w)``; ``N_m(h .)`` is the number of distinct ``w`` with ``c_m(h w) > 0``;
``D_m = n_1 / (n_1 + 2 n_2)`` from the numbers of ``m``-grams counted once and twice.

``orders=(2, 5)`` returns the bigram and the 5-gram at once (the 5-gram's recursion passes through
order 2); the bigram of that pair uses continuation counts where a stand-alone bigram would use
raw counts, so :meth:`KneserNey.nll` computes each requested order as the top of its own chain.
"""
from __future__ import annotations

import math

import numpy as np


def max_order(vocab_size: int) -> int:
    """The largest order whose keys fit in 62 bits for a vocabulary of ``vocab_size``."""
    v = max(int(vocab_size), 2)
    return max(1, int(62 // math.log2(v)))


def _keys(x: np.ndarray, m: int, V: int) -> np.ndarray:
    """``K (N-m+1,)``: ``K[j]`` is the key of ``x[j .. j+m-1]``."""
    k = x.astype(np.int64)
    for j in range(1, m):
        k = k[:-1] * V + x[j:]
    return k


class _Table:
    """One order's sorted keys and counts, plus per-context totals and type counts."""

    def __init__(self, keys: np.ndarray, counts: np.ndarray, V: int):
        self.keys, self.counts = keys, counts.astype(np.float64)
        n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
        self.D = n1 / (n1 + 2 * n2) if n1 + n2 else 0.5
        self.D = min(max(self.D, 0.05), 0.95)
        ctx = keys // V  # sorted, since keys are
        self.ctx, start = np.unique(ctx, return_index=True)
        self.total = np.add.reduceat(self.counts, start) if keys.size else np.zeros(0)
        self.types = np.diff(np.append(start, keys.size)).astype(np.float64)

    @staticmethod
    def lookup(sorted_keys: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(index, found)`` of each ``q`` in ``sorted_keys``."""
        i = np.searchsorted(sorted_keys, q)
        i = np.minimum(i, max(sorted_keys.size - 1, 0))
        found = sorted_keys.size > 0
        return i, (sorted_keys[i] == q) if found else np.zeros(q.shape, bool)


class KneserNey:
    """``KneserNey(vocab_size, order).fit(ids)``, then ``nll(seq, start)`` per character."""

    def __init__(self, vocab_size: int, order: int = 5):
        self.V = int(vocab_size)
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        self.order = min(int(order), max_order(self.V))
        self.tables: dict[tuple[int, bool], _Table] = {}
        self.chars = 0

    def fit(self, ids) -> "KneserNey":
        """Count every order up to :attr:`order` in ``ids (N,)`` (ids in ``[0, V)``)."""
        x = np.asarray(ids).reshape(-1).astype(np.int64)
        if x.size and (x.min() < 0 or x.max() >= self.V):
            raise ValueError(f"ids must lie in [0, {self.V})")
        self.chars = int(x.size)
        uniq = {}
        for m in range(1, self.order + 1):
            if x.size >= m:
                u, c = np.unique(_keys(x, m, self.V), return_counts=True)
            else:
                u, c = np.zeros(0, np.int64), np.zeros(0, np.int64)
            uniq[m] = (u, c)
            self.tables[(m, True)] = _Table(u, c, self.V)  # raw counts: the top of a chain
        for m in range(1, self.order):  # continuation counts: distinct left extensions
            suffix = uniq[m + 1][0] % (self.V ** m)
            u, c = np.unique(suffix, return_counts=True)
            self.tables[(m, False)] = _Table(u, c, self.V)
        return self

    def _prob(self, keys_by_order: dict, top: int, n: int) -> np.ndarray:
        """``p_top(w | h)`` for ``n`` query positions; ``keys_by_order[m]`` holds each position's
        ``m``-gram key, or -1 where the text before it is shorter than ``m - 1``."""
        p = np.full(n, 1.0 / self.V)
        for m in range(1, top + 1):
            tab = self.tables[(m, m == top)]
            k = keys_by_order[m]
            ok = k >= 0
            ci, cfound = _Table.lookup(tab.ctx, k // self.V)
            cfound &= ok  # (for m = 1 every key's context is 0: the one empty context)
            ki, kfound = _Table.lookup(tab.keys, k)
            c = np.where(kfound & ok, tab.counts[ki] if tab.keys.size else 0.0, 0.0)
            tot = tab.total[ci] if tab.total.size else np.ones(n)
            types = tab.types[ci] if tab.types.size else np.zeros(n)
            tot = np.where(cfound, tot, 1.0)
            q = np.maximum(c - tab.D, 0.0) / tot + tab.D * types / tot * p
            p = np.where(cfound, q, p)
        return p

    def nll(self, seq, start: int = 0, orders=None) -> dict[int, np.ndarray]:
        """``{order: -log p(seq[t] | seq[t-order+1 .. t-1]) for t in [start, len(seq))}`` in
        nats; the characters before ``start`` serve as context only. ``orders`` defaults to
        ``(order,)``; each must be at most :attr:`order`."""
        s = np.asarray(seq).reshape(-1).astype(np.int64)
        orders = (self.order,) if orders is None else tuple(orders)
        if any(o < 1 or o > self.order for o in orders):
            raise ValueError(f"orders must lie in [1, {self.order}], got {orders}")
        n = s.size - start
        if n <= 0:
            return {o: np.zeros(0) for o in orders}
        pos = np.arange(start, s.size)
        keys = {}
        for m in range(1, max(orders) + 1):
            km = _keys(s, m, self.V)  # km[j]: the m-gram ending at j + m - 1
            j = pos - m + 1
            keys[m] = np.where(j >= 0, km[np.maximum(j, 0)] if km.size else -1, -1)
        return {o: -np.log(self._prob(keys, o, n)) for o in orders}
