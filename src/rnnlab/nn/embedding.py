"""A lookup table ``y = W[idx]`` from token ids to dense vectors."""
from __future__ import annotations

import numpy as np

from .. import backend
from ..errors import RnnlabError
from . import workspace
from .cells import fused_kernels
from .module import Module


def check_ids(idx, V: int) -> None:
    """Raise :class:`RnnlabError` when an id of ``idx`` lies outside ``[0, V)`` (data encoded
    with another vocabulary)."""
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= V):
        raise RnnlabError(f"token id out of range [0, {V}) (got {int(idx.min())}..{int(idx.max())}): "
                          "encode the data with the model's vocabulary")


def gather_rows(table, idx, out):
    """``out[...] = table[idx]`` for checked ids (:func:`check_ids`): ``table (V, E)``, ``idx
    (...)``, ``out (..., E)``. NumPy writes straight into ``out`` (``mode="clip"`` never clips
    checked ids; it is what lets ``take`` write ``out=``)."""
    if backend.array_module(table) is np:
        np.take(table, idx, axis=0, out=out, mode="clip")
    else:
        out[...] = table[idx]
    return out


def scatter_add_rows(target, idx, rows, method: str | None = None):
    """``target[idx[n]] += rows[n]`` for every ``n``, duplicates summed (like ``np.add.at``).

    Shapes: ``target (V, E)``, ``idx (N,)`` integer, ``rows (N, E)``.

    ``method``:

    - ``"reduceat"`` (NumPy default): stable-sort the ids, sum each run of equal ids with one
      ``add.reduceat`` and add the ``U`` sums into their ``U`` distinct rows. A duplicate-free
      fancy-index update, several times faster than ``np.add.at``.
    - ``"bincount"`` (default where ``add.reduceat`` is missing, e.g. CuPy): one weighted
      ``bincount`` over the flat positions ``idx[n] * E + e``, accumulated in float64. Only the
      ``U`` distinct ids are given rows when ``V > N``, so memory stays ``O(N * E)``.

    Both are exact sums (no dropped duplicates); they differ from ``np.add.at`` only in the order
    of floating-point additions. Returns ``target``.

    With ``method=None`` on NumPy float32/float64 arrays and numba available, a compiled loop
    adds the rows in ``np.add.at``'s order instead (:func:`rnnlab.nn.fused.scatter_add_rows`).
    """
    xp = backend.array_module(target, idx, rows)
    n, e = rows.shape
    if n == 0:
        return target
    if method is None:
        fk = fused_kernels(xp, target.dtype)
        if fk is not None and rows.dtype == target.dtype and idx.dtype.kind in "iu":
            return fk.scatter_add_rows(target, idx, rows)  # one pass, np.add.at's order (numba)
        method = "reduceat" if hasattr(xp.add, "reduceat") else "bincount"
    if method == "reduceat":
        order = xp.argsort(idx, kind="stable")  # (N,)
        sorted_idx = idx[order]  # (N,)
        starts = xp.flatnonzero(xp.concatenate([xp.ones(1, dtype=bool), sorted_idx[1:] != sorted_idx[:-1]]))
        target[sorted_idx[starts]] += xp.add.reduceat(rows[order], starts, axis=0)  # (U, E)
        return target
    if method == "bincount":
        v = target.shape[0]
        if v > n:  # compress the ids to the U <= N distinct ones
            uniq, slot = xp.unique(idx, return_inverse=True)
            slot = slot.reshape(-1)  # (N,)
        else:
            uniq, slot = None, idx
        nslots = uniq.shape[0] if uniq is not None else v
        flat = (slot[:, None] * e + xp.arange(e)).reshape(-1)  # (N*E,) positions in (slots, E)
        sums = xp.bincount(flat, weights=rows.reshape(-1), minlength=nslots * e)  # (slots*E,) float64
        sums = sums.reshape(nslots, e).astype(target.dtype, copy=False)  # (slots, E)
        if uniq is None:
            target += sums
        else:
            target[uniq] += sums
        return target
    raise ValueError(f"unknown scatter method {method!r}: use 'reduceat' or 'bincount'")


class Embedding(Module):
    r"""Token embedding ``y[...] = W[idx[...]]``.

    Backward: :math:`\partial L/\partial W_v = \sum_{n : idx_n = v} dy_n`; the integer input has
    no gradient, so :meth:`backward` returns ``None``.

    Shape legend: ``V`` = ``num_embeddings`` (vocabulary), ``E`` = ``embedding_dim``, ``...`` any
    index shape (e.g. ``T, B``), ``N`` its size.

    Parameters
    ----------
    num_embeddings, embedding_dim : int
    dtype : numpy dtype
    rng : np.random.Generator, optional
        ``W ~ N(0, 1)`` like PyTorch; a fresh unseeded generator when ``None``.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        dtype=np.float32,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        if int(num_embeddings) < 1 or int(embedding_dim) < 1:
            raise RnnlabError(
                f"Embedding needs positive sizes, got num_embeddings={num_embeddings}, "
                f"embedding_dim={embedding_dim}"
            )
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        rng = rng if rng is not None else np.random.default_rng()
        w = rng.standard_normal((self.num_embeddings, self.embedding_dim)).astype(dtype)
        self.add_param("weight", w)

    @property
    def weight(self):
        return self.params["weight"]

    def forward(self, idx):
        """``idx (...) int -> y (..., E)``; ``cache = idx``.

        Raises :class:`RnnlabError` when an id lies outside ``[0, V)`` (data encoded with another
        vocabulary).
        """
        xp = backend.array_module(idx)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"Embedding expects integer ids, got dtype {idx.dtype}")
        check_ids(idx, self.num_embeddings)
        y = workspace.empty(idx.shape + (self.embedding_dim,), self.weight.dtype, xp)  # (..., E)
        return gather_rows(self.weight, idx, y), idx

    def backward(self, dy, cache):
        """Adds ``dW (V, E)`` into ``grads["weight"]``; returns ``None``."""
        idx = cache
        scatter_add_rows(
            self.grads["weight"],
            idx.reshape(-1),  # (N,)
            dy.reshape(-1, self.embedding_dim),  # (N, E)
        )
        return None

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"
