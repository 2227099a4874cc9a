"""Experiment ``length``: a feed-forward network has a fixed input length; a recurrent one does not.

Claim
    An MLP reads a fixed window of ``W`` steps: a shorter sequence must be padded, a longer one
    truncated. Its first layer has separate weights for every slot of the window, so a slot that
    was always padding in training has untrained weights, and nothing learnt at one position
    transfers to another. A causal CNN shares weights over time but sees only its receptive
    field ``R``. A recurrent network applies the *same* parameters at every step and reads a
    sequence of any length; if it has learnt the task's automaton, it generalises to lengths it
    never saw.

Tasks (bits, one-hot; :mod:`rnnlab.data.synthetic`)
    - parity, :math:`y = \\sum_t b_t \\bmod 2`: a two-state automaton. Any model that sees only
      ``W < n`` of the bits scores exactly chance (0.5) in expectation, since the unseen bits'
      parity is uniform and independent of the seen ones.
    - majority, :math:`y = [\\#1 > \\#0]`: one counter. From the last ``W`` bits the best possible
      accuracy is :func:`window_bayes_accuracy` (above chance, falling like ``sqrt(W/n)``).

Protocol
    Train on lengths uniform on ``1..L`` in variable-length batches (``lengths=``: the engine
    freezes each sequence's state at its own end, so the padded batch is exact), fresh batches
    every step; test on every length ``n = 1..4L``. Models: ``mlp`` (window ``W = L``),
    ``mlp-wide`` (``W = 4L``: no truncation at test, but the slots beyond ``L`` are padding in
    every training example), ``cnn`` (kernel 2, dilations 1..2^(l-1), ``R = 2^l >= L``), ``rnn``,
    ``lstm``, ``gru``. Same hidden size, optimizer (Adam, norm clipping 1), steps and training
    batches for all.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from ..data import synthetic as syn
from . import seqmodels
from .common import Result, Timer, check_seeds, out_path, rng_for, run_cells
from .report import Report, Table, band, mean_std, new_figure, pm
from .train import TrainConfig, evaluate, train

NAME = "length"
TASKS = ("parity", "majority")
MODELS = ("mlp", "mlp-wide", "cnn", "rnn", "lstm", "gru")


@dataclass
class Config:
    max_len: int = 10  # L: training lengths 1..L
    factor: int = 4  # test lengths 1..factor*L
    steps: int = 1500
    batch: int = 32
    hidden: int = 32
    lr: float = 1e-2
    clip: float = 1.0
    test_per_length: int = 400


DEFAULT = Config()
QUICK = Config(max_len=6, steps=150, hidden=16, test_per_length=100)


def window_bayes_accuracy(n: int, W: int) -> float:
    """Best accuracy on majority of ``n`` fair bits for any predictor that sees only ``W`` of them.

    With ``k`` ones among the seen bits and ``j ~ Bin(n - W, 1/2)`` among the rest, ``y = 1`` iff
    ``2(k + j) > n``; the Bayes rule picks the likelier class, so
    ``acc = sum_k Bin(k; W, 1/2) max(p_k, 1 - p_k)`` with ``p_k = P(j > n/2 - k)``.
    """
    if n <= W:
        return 1.0
    m = n - W
    pj = np.array([math.comb(m, j) for j in range(m + 1)], dtype=np.float64) / 2.0**m
    acc = 0.0
    for k in range(W + 1):
        p1 = pj[np.arange(m + 1) * 2 + 2 * k > n].sum()
        acc += math.comb(W, k) / 2.0**W * max(p1, 1.0 - p1)
    return float(acc)


def _build(kind: str, cfg: Config, rng) -> object:
    L = cfg.max_len
    if kind == "mlp":
        return seqmodels.build("mlp", 2, 2, hidden=cfg.hidden, window=L, rng=rng)
    if kind == "mlp-wide":
        return seqmodels.build("mlp", 2, 2, hidden=cfg.hidden, window=cfg.factor * L, rng=rng)
    if kind == "cnn":
        layers = max(1, math.ceil(math.log2(L)))  # R = 2^layers >= L
        return seqmodels.build("cnn", 2, 2, hidden=cfg.hidden, cnn_layers=layers, rng=rng)
    return seqmodels.build(kind, 2, 2, hidden=cfg.hidden, rng=rng)


def _buckets(L: int, factor: int):
    """Length ranges for the table: seen lengths, then (L, 2L], (2L, factor*L]."""
    return [(1, L), (L + 1, 2 * L), (2 * L + 1, factor * L)]


def cell(p: dict) -> dict:
    """One trial: model ``p["model"]`` trained on ``p["task"]`` with seed ``p["seed"]``; its
    accuracy at every test length ``1..factor*L``, its parameters and its window."""
    cfg = Config(**p["config"])
    task, kind, s = p["task"], p["model"], int(p["seed"])
    L, N = cfg.max_len, cfg.factor * cfg.max_len
    sampler = getattr(syn, task)
    test_len = np.repeat(np.arange(1, N + 1), cfg.test_per_length)  # (N*P,) sorted: short chunks stay short
    test = sampler(rng_for(s, NAME, task, "test"), test_len.size, 1, N, lengths=test_len)
    model = _build(kind, cfg, rng_for(s, NAME, task, kind, "init"))
    tc = TrainConfig(steps=cfg.steps, batch=cfg.batch, lr=cfg.lr, clip=cfg.clip)
    train(model, lambda r: sampler(r, cfg.batch, 1, L), tc, rng_for(s, NAME, task, "data"))
    correct = evaluate(model, test)["acc"][0]  # (N*P,)
    per_len = correct.reshape(N, cfg.test_per_length).mean(axis=1)  # (N,)
    w = model.window()
    return {"acc": [float(a) for a in per_len], "params": int(model.num_params()),
            "window": None if math.isinf(w) else float(w)}  # None: unbounded (JSON has no infinity)


def run(out_dir, quick: bool = False, seeds: int = 3, tasks=TASKS, models=MODELS, workers: int = 0,
        backend: str = "local", address=None, resume: bool = False, progress: bool = True, **overrides) -> Result:
    """Train every model on every task for ``seeds`` seeds, each (task, model, seed) a trial run
    in parallel; write ``length.{md,csv,png}``.

    ``overrides`` replace fields of the default (or quick) :class:`Config`.
    """
    seeds = check_seeds(seeds)
    cfg = replace(QUICK if quick else DEFAULT, **overrides)
    out = out_path(out_dir)
    L, N = cfg.max_len, cfg.factor * cfg.max_len
    lengths_all = np.arange(1, N + 1)
    cells = {f"{task}_{kind}_seed={s}": {"task": task, "model": kind, "seed": s, "config": asdict(cfg)}
             for task in tasks for kind in models for s in range(seeds)}
    with Timer() as timer:
        res = run_cells(NAME, cells, out, workers=workers, backend=backend, address=address, resume=resume,
                        progress=progress)
    acc, params, window = {}, {}, {}  # (task, model) -> (seeds, N) accuracy per test length
    for task in tasks:
        for kind in models:
            for s in range(seeds):
                r = res[f"{task}_{kind}_seed={s}"]
                acc.setdefault((task, kind), []).append(np.array(r["acc"]))
                params[kind] = r["params"]
                window[kind] = math.inf if r["window"] is None else r["window"]
    acc = {k: np.stack(v) for k, v in acc.items()}  # (seeds, N)

    rows, long_rows = [], []
    for task in tasks:
        for kind in models:
            a = acc[(task, kind)]
            row = {"task": task, "model": kind, "params": params[kind],
                   "sees_last": "all" if math.isinf(window[kind]) else int(window[kind])}
            for lo, hi in _buckets(L, cfg.factor):
                m, sd = mean_std(a[:, lo - 1 : hi].mean(axis=1))
                row[f"acc_{lo}_{hi}_mean"], row[f"acc_{lo}_{hi}_std"] = m, sd
            rows.append(row)
            for i, n in enumerate(lengths_all):
                m, sd = mean_std(a[:, i])
                long_rows.append({"task": task, "model": kind, "length": int(n), "acc_mean": m, "acc_std": sd})

    cols = {"task": "task", "model": "model", "params": "params", "sees last": "sees_last"}
    for lo, hi in _buckets(L, cfg.factor):
        label = f"acc n={lo}..{hi}" + (" (trained)" if hi == L else "")
        cols[label] = (lambda lo, hi: lambda r: pm(r[f"acc_{lo}_{hi}_mean"], r[f"acc_{lo}_{hi}_std"]))(lo, hi)

    pad_rows = []
    for lo, hi in _buckets(L, cfg.factor):
        ns = np.arange(lo, hi + 1)
        r = {"lengths": f"{lo}..{hi}"}
        for kind, W in (("mlp", L), ("mlp-wide", cfg.factor * L)):
            r[f"{kind}_padding"] = float(np.mean(np.maximum(W - ns, 0) / W))
            r[f"{kind}_dropped"] = float(np.mean(np.maximum(ns - W, 0) / ns))
        r["majority_bayes_W=L"] = float(np.mean([window_bayes_accuracy(int(n), L) for n in ns]))
        pad_rows.append(r)
    pad_cols = {
        "test lengths": "lengths",
        f"mlp (W={L}): input slots that are padding": "mlp_padding",
        "mlp: sequence dropped by truncation": "mlp_dropped",
        f"mlp-wide (W={cfg.factor * L}): padding": "mlp-wide_padding",
        f"best majority acc from last {L} bits": "majority_bayes_W=L",
    }

    rep = Report(NAME, "Experiment `length`: fixed input length vs recurrence",
                 settings={"mode": "quick" if quick else "default", "seeds": seeds, **asdict(cfg)})
    rep.add_table("main", Table(rows, cols, title=f"Test accuracy by length (trained on 1..{L}), mean ± std over {seeds} seeds"))
    rep.add_table("window", Table(pad_rows, pad_cols, title="What the fixed window does to the MLP's input"))
    rep.add_table("per_length", Table(long_rows, in_md=False))
    rep.notes += [
        "Parity seen through a window of W < n bits is at chance (0.5) for *any* model: the unseen bits' parity is independent of the seen ones.",
        "Padding share: fraction of the MLP's input slots filled with zero vectors (FLOPs of its first layer spent on nothing); dropped: fraction of the sequence it never sees.",
        "`sees last`: the steps one output can depend on (the MLP's window, the CNN's receptive field; `all` for the recurrent models).",
    ]
    fig, axes = new_figure(len(tasks), 1, size=(5.2, 3.6))
    for ax, task in zip(axes[0], tasks):
        for kind in models:
            a = acc[(task, kind)]
            band(ax, lengths_all, a.mean(axis=0), a.std(axis=0, ddof=1) if seeds > 1 else 0 * a[0], kind)
        if task == "majority":
            ax.plot(lengths_all, [window_bayes_accuracy(int(n), L) for n in lengths_all], "k:", lw=1,
                    label=f"best from last {L} bits")
        ax.axvline(L + 0.5, color="grey", lw=0.8, ls="--")
        ax.axhline(0.5, color="grey", lw=0.5)
        ax.set(title=f"{task}: trained on n ≤ {L}", xlabel="test length n", ylabel="accuracy", ylim=(0.3, 1.02))
        ax.legend(fontsize=7, loc="lower left")
    rep.figure, rep.figure_caption = fig, "accuracy vs test length"
    paths = rep.write(out)
    return Result(NAME, paths, {k: t.rows for k, t in rep.tables.items()},
                  data={"acc": acc, "lengths": lengths_all, "config": cfg}, seconds=timer.seconds)
