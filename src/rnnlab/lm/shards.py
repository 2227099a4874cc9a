"""The training step's forward, loss and backward, optionally split over threads by batch rows.

With ``n`` shards the ``B`` rows of a batch are cut into ``n`` contiguous blocks, and each block
runs on its own thread through its own :meth:`~rnnlab.nn.module.Module.replica` of the model
(the same parameter arrays, separate gradient arrays)::

    rows [lo_j, hi_j)  ->  thread j:  logits_j, state_j = replica_j.forward(x_j, state_j)
                                      loss_j = sum over its scored items of -log p / N
                                      replica_j.backward(dloss_j / dlogits_j)
    loss  = sum_j loss_j                  N = scored items of the whole batch
    grads = grads_0 + grads_1 + ...       added in shard order, so the result is deterministic
    state_n = the shards' states joined along the batch axis

The sum of the shards' losses is the whole batch's mean loss and the summed gradients are its
gradient (each item's weight ``1/N`` is the same as in the unsplit step); only the order of
floating-point additions differs, so results agree with the unsplit step to rounding, and a run
with the same shard count is bit-for-bit repeatable.

Why: a recurrent step is a chain of small GEMMs with ``B`` rows. A BLAS library splits each of
them over its threads with a synchronisation per call and little work per thread, which scales
poorly; whole independent halves of the batch, each on one core with single-threaded BLAS,
scale much better (measurements in docs/benchmarks.md). While shards run, the BLAS is limited to
one thread (threadpoolctl) and restored afterwards. With the compiled loops over time
(:mod:`rnnlab.nn.timeloop`) a shard's whole recurrence runs without the GIL; without them the
NumPy calls and the numba kernels release it, and only the short Python loop over time holds it.

:meth:`BatchShards.loss_sum` is the same split without the backward, for evaluation.

State convention: a model's carried state (:meth:`LanguageModel.initial_state`) is ``None``, an
array or a tuple of arrays, each with the batch on axis 1, which is how it is split and joined.
Dropout masks come from one generator per shard seeded from ``rng`` (drawn in shard order).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import backend
from ..nn import cells
from ..nn.losses import softmax_cross_entropy


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


MIN_ROWS = 8
"""Fewest batch rows per shard that automatic planning allows."""

MIN_STEP_WORK = 1 << 21
"""Fewest multiply-adds in one shard's per-step recurrent GEMM (rows x G*H x H) that automatic
planning splits for when the layers loop over time in Python: below it, handing the GIL and
waking threads at every time step costs more than the second core gives. Measured on 2 cores
(docs/benchmarks.md): with H = 128 and 16 rows per shard (up to 1M multiply-adds) the split step
was as fast or slower than the unsplit one on two BLAS threads; from H = 256 with 32 rows (2M) on
it was faster."""

MIN_STEP_WORK_COMPILED = 1 << 19
"""The same floor when the layers run the compiled loops over time (:mod:`rnnlab.nn.timeloop`),
which hold no GIL, so the shards' threads contend for it between layers, not at every time step.
Measured on 2 cores at config A (B = 32, H = 128, 16 rows per shard): the split step was faster
than the unsplit one for the LSTM (2^20 multiply-adds; two layers: 30 vs 41 ms) and the GRU
(786k; two layers: 28 vs 31 ms), slower for the RNN (2^18; one layer: 10.1 vs 8.6 ms)."""


def _min_step_work(model) -> int:
    compiled = cells.sequence_loops(np, model.param_dtype) is not None
    return MIN_STEP_WORK_COMPILED if compiled else MIN_STEP_WORK


def plan_shards(model, batch: int, threads: int = 0, cores: int | None = None) -> int:
    """How many shards a training step uses. ``threads > 0`` asks for exactly that many (at most
    one per batch row). ``threads = 0`` (auto) uses one per usable core for a recurrent model when
    each shard keeps at least :data:`MIN_ROWS` rows and :data:`MIN_STEP_WORK` multiply-adds per
    time step, and one shard otherwise (the window models and the bigram run few, large GEMMs,
    which the BLAS spreads over the cores well by itself). Models that say ``split_rows = True``
    (the Transformer, the bag-of-words model, minGRU/minLSTM: their element-wise passes and
    compiled scans run on one core each, and their GEMMs are small for names-sized inputs) get one
    shard per core whenever each keeps :data:`MIN_ROWS` rows; measured on 2 cores
    (docs/experiments.md, ``parallel``): a minGRU step 22.9 -> 14.3 ms, a 4-layer Transformer
    step on names 31 -> 23 ms."""
    if threads > 0:
        return max(1, min(threads, batch))
    if getattr(model, "split_rows", False):
        return max(1, min(usable_cores() if cores is None else cores, batch // MIN_ROWS))
    gates = {"rnn": 1, "gru": 3, "lstm": 4}.get(getattr(model, "cell", None))
    if gates is None:
        return 1
    n = min(usable_cores() if cores is None else cores, batch // MIN_ROWS)
    floor = _min_step_work(model) if n > 1 else 0
    while n > 1 and (batch // n) * gates * model.hidden * model.hidden < floor:
        n -= 1
    return max(1, n)


_BLAS = None  # threadpoolctl's controller, made on first use


def blas_limit(threads: int):
    """A context manager that holds the BLAS libraries NumPy loaded at ``threads`` threads and
    restores them on exit (threadpoolctl)."""
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=threads, user_api="blas")


def _split_state(state, lo: int, hi: int):
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s[:, lo:hi] for s in state)
    return state[:, lo:hi]


def _join_states(xp, states: list):
    first = states[0]
    if first is None:
        return None
    if isinstance(first, tuple):
        return tuple(xp.concatenate([s[i] for s in states], axis=1) for i in range(len(first)))
    return xp.concatenate(states, axis=1)


class BatchShards:
    """``BatchShards(model, shards, gemm, team)``: ``loss, state_n = step(x, y, state, lengths,
    rng)`` runs forward, loss and backward and leaves the gradient of the batch's mean loss in
    ``model.grads`` (overwritten, not added to). ``shards=1`` is the plain single-threaded step;
    the CuPy backend always runs one shard. Each shard's recurrent layers run their loops over
    time with the per-step GEMM ``gemm`` and each step split over ``team`` threads
    (:func:`rnnlab.nn.cells.loop_settings`; CuPy ignores both). Call :meth:`close` (or use
    ``with``) to stop the worker threads."""

    def __init__(self, model, shards: int = 1, gemm: str = "blas", team: int = 1) -> None:
        if shards < 1 or team < 1:
            raise ValueError(f"shards and team must be >= 1, got {shards}, {team}")
        self.model = model
        self.shards = 1 if backend.xp is not np else int(shards)
        self.gemm, self.team = (gemm, int(team)) if backend.xp is np else ("blas", 1)
        cells.loop_settings(self.gemm, self.team)  # refuses settings this installation cannot run
        self.replicas = [model] + [model.replica() for _ in range(self.shards - 1)]
        self._pool = ThreadPoolExecutor(self.shards - 1, thread_name_prefix="rnnlab-shard") if self.shards > 1 else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def step(self, x, y, state=None, lengths=None, rng=None):
        """Forward, loss, zero_grad, backward. ``x, y (T, B)`` ids and targets (``-1`` = not
        scored), ``lengths (B,)`` for a padded batch. Returns ``(loss, state_n)``: the mean
        loss as a 0-d array and the model's state after the batch."""
        model = self.model
        if min(self.shards, x.shape[1]) == 1:
            with cells.loop_settings(self.gemm, self.team):
                logits, state_n, cache = model.forward(x, state, lengths=lengths, rng=rng)
                loss, dlogits = softmax_cross_entropy(logits, y)
                model.zero_grad()
                model.backward(dlogits, cache)
            return loss, state_n
        xp = backend.xp
        count = int((y != -1).sum())
        weight = model.param_dtype.type(1) / model.param_dtype.type(max(count, 1))  # each item's 1/N

        def shard(rep, x, y, state, lengths, rng):
            logits, state_n, cache = rep.forward(x, state, lengths=lengths, rng=rng)
            loss, dlogits = softmax_cross_entropy(logits, y, mask=xp.full(y.shape, weight, model.param_dtype),
                                                  reduction="sum")
            rep.zero_grad()
            rep.backward(dlogits, cache)
            return loss, state_n

        loss, state_n = self._map(shard, x, y, state, lengths, rng)
        grads = model.grads
        for rep in self.replicas[1 : min(self.shards, x.shape[1])]:
            for k, g in rep.grads.items():
                grads[k] += g
        return loss, state_n

    def loss_sum(self, x, y, state=None, lengths=None):
        """Forward and loss only (evaluation): ``(sum of -log p over the scored items as a 0-d
        array, state_n)``, the rows split over the shards as in :meth:`step`. Call
        ``model.eval()`` first: no ``rng`` is passed, so a training-mode model with dropout
        raises (the replicas follow the model's mode)."""
        def shard(rep, x, y, state, lengths, rng):
            logits, state_n, _ = rep.forward(x, state, lengths=lengths)
            return softmax_cross_entropy(logits, y, reduction="sum")[0], state_n

        if min(self.shards, x.shape[1]) == 1:
            with cells.loop_settings(self.gemm, self.team):
                return shard(self.model, x, y, state, lengths, None)
        return self._map(shard, x, y, state, lengths, None)

    def _map(self, fn, x, y, state, lengths, rng):
        """``fn(replica_j, x_j, y_j, state_j, lengths_j, rng_j) -> (loss_j, state_j)`` for each
        shard's block of rows, shard 0 on this thread and the others on the pool, with the BLAS
        at one thread; returns the losses added in shard order and the states joined."""
        model = self.model
        B = x.shape[1]
        n = min(self.shards, B)
        bounds = [(B * j) // n for j in range(n + 1)]
        seeds = rng.integers(0, 2**63, size=n) if rng is not None else [None] * n
        err = np.geterr()  # the caller's floating-point error handling holds in the workers too

        def run(j):
            lo, hi = bounds[j], bounds[j + 1]
            rep = self.replicas[j]
            if rep.training != model.training:
                rep.train(model.training)
            with np.errstate(**err), cells.loop_settings(self.gemm, self.team):
                return fn(rep, x[:, lo:hi], y[:, lo:hi], _split_state(state, lo, hi),
                          None if lengths is None else lengths[lo:hi],
                          None if seeds[j] is None else np.random.default_rng(int(seeds[j])))

        with blas_limit(1):
            futures = [self._pool.submit(run, j) for j in range(1, n)]
            results = [run(0)] + [f.result() for f in futures]
        loss = results[0][0]
        for other, _ in results[1:]:
            loss = loss + other
        return loss, _join_states(backend.xp, [s for _, s in results])
