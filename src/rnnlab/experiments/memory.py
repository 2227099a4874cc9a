"""Experiment ``memory``: long time lags (Hochreiter & Schmidhuber 1997).

Claim
    To use an input seen ``T`` steps ago a recurrent network must carry it in its state through
    ``T`` applications of the same transition, and learn to do so from a gradient that crosses
    those ``T`` steps (see experiment ``gradients``). Gated cells (LSTM, GRU) keep an additive
    path through time and should learn longer lags than the vanilla RNN within the same budget.
    A feed-forward network has no state: it can only use what is in its input window. Two MLPs:
    ``mlp`` with a fixed window of the last ``mlp_window`` steps (the same network for every
    ``T``; when the relevant inputs lie outside the window it cannot beat the memoryless
    baseline, whatever it learns) and ``mlp-full`` whose window is the whole sequence (a first
    layer that grows with ``T``, and a gradient path of length 1 from every input to the
    output). Both tasks are meant not to be solvable by chance: random weight guessing (which
    solves several older "long-lag" benchmarks, H&S 1997 sec. 5) should not help.

Tasks (:mod:`rnnlab.data.synthetic`)
    - ``adding``: pairs (value ``~U(-1,1)``, marker); output ``0.5 + (X_1 + X_2)/4`` for the two
      marked values, both in the first half of the ``T`` steps. Memoryless baseline (predict
      0.5): MSE ``1/24 ≈ 0.0417``. Success: test MSE ``< 0.01``.
    - ``copy``: ``N`` symbols out of ``K``, ``T - 1`` blanks, a delimiter, then recall the ``N``
      symbols; scored on the recall steps only. Baseline: cross-entropy ``log K``, accuracy
      ``1/K``. Success: recall accuracy ``>= 0.9``.

Protocol
    For each lag ``T``, model and seed: Adam with norm clipping, fresh batches, at most ``steps``
    steps, stopping early once a validation batch meets the success criterion; then the test
    set decides success. ``success rate`` = successful seeds / seeds. ``guess`` is random weight
    guessing: ``guesses`` tanh RNNs with every weight ``~U(-a, a)`` (``a`` log-uniform on
    ``[0.1, 10]``), the best on one batch kept and tested.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from ..data import synthetic as syn
from . import seqmodels
from .common import Result, Timer, check_seeds, out_path, progress, rng_for, single_blas_thread
from .report import Report, Table, band, mean_std, new_figure, pm
from .train import TrainConfig, evaluate, loss_and_grad, train

NAME = "memory"
TASKS = ("adding", "copy")
MODELS = ("mlp", "mlp-full", "rnn", "lstm", "gru")


@dataclass
class Config:
    lags: tuple = (5, 10, 20, 50, 100, 200)
    steps: int = 1000  # at most, per run
    batch: int = 32
    hidden: int = 32
    mlp_hidden: int = 64
    mlp_window: int = 10  # the fixed-window MLP ("mlp"); "mlp-full" sees the whole sequence
    lr: float = 1e-2
    clip: float = 1.0
    check_every: int = 100
    val_size: int = 256
    test_size: int = 1000
    n_copy: int = 5
    n_symbols: int = 8
    guesses: int = 200
    guess_batch: int = 64
    adding_success_mse: float = 0.01
    copy_success_acc: float = 0.9


DEFAULT = Config()
QUICK = Config(lags=(5, 10, 20, 50, 100), steps=50, hidden=16, mlp_hidden=32, check_every=25,
               val_size=128, test_size=256, guesses=10, guess_batch=32)


def baseline(task: str, cfg: Config) -> dict:
    """The best memoryless predictor: adding, the constant 0.5 (MSE 1/24); copy, the uniform
    distribution over the ``K`` symbols (cross-entropy ``log K``, accuracy ``1/K``)."""
    if task == "adding":
        return {"loss": syn.ADDING_BASELINE_MSE, "metric": syn.ADDING_BASELINE_MSE}
    return {"loss": math.log(cfg.n_symbols), "metric": 1.0 / cfg.n_symbols}


def _sampler(task: str, T: int, cfg: Config):
    if task == "adding":
        return lambda rng, B: syn.adding(rng, B, T)
    return lambda rng, B: syn.copy_memory(rng, B, T, n_copy=cfg.n_copy, n_symbols=cfg.n_symbols)


def _shape(task: str, T: int, cfg: Config):
    """``(input size, output size, output steps, sequence length)``."""
    if task == "adding":
        return 2, 1, 1, T
    return cfg.n_symbols + 2, cfg.n_symbols, cfg.n_copy, T + 2 * cfg.n_copy


def _metric(task: str, ev: dict) -> float:
    """Test MSE (adding) or recall accuracy (copy)."""
    return float(ev["sq_err"].mean()) if task == "adding" else float(ev["acc"].mean())


def _success(task: str, metric: float, cfg: Config) -> bool:
    if task == "adding":
        return metric < cfg.adding_success_mse
    return metric >= cfg.copy_success_acc


def _build(kind: str, task: str, T: int, cfg: Config, rng):
    I, O, S, length = _shape(task, T, cfg)
    if kind in ("mlp", "mlp-full"):
        W = length if kind == "mlp-full" else cfg.mlp_window
        return seqmodels.build("mlp", I, O, hidden=cfg.mlp_hidden, window=W, out_steps=S, rng=rng)
    return seqmodels.build(kind, I, O, hidden=cfg.hidden, out_steps=S, rng=rng)


def random_guess(task: str, T: int, cfg: Config, rng: np.random.Generator):
    """Random weight guessing: the best of ``cfg.guesses`` random tanh RNNs on one batch.

    Every parameter is drawn from ``U(-a, a)`` with ``a = 10^u``, ``u ~ U(-1, 1)``; the guess
    with the lowest loss on a fixed batch of ``guess_batch`` sequences is returned.
    """
    I, O, S, _ = _shape(task, T, cfg)
    model = seqmodels.build("rnn", I, O, hidden=cfg.hidden, out_steps=S, rng=rng)
    model.eval()
    batch = _sampler(task, T, cfg)(rng, cfg.guess_batch)
    best, best_loss = None, float("inf")
    for _ in range(cfg.guesses):
        a = 10.0 ** rng.uniform(-1.0, 1.0)
        for p in model.params.values():
            p[...] = rng.uniform(-a, a, size=p.shape)
        out, _ = model.forward(batch.x, batch.lengths)
        loss, _ = loss_and_grad(out, batch)
        if math.isfinite(loss) and loss < best_loss:
            best, best_loss = model.state_dict(), loss
    model.load_state_dict(best)
    return model


def run(out_dir, quick: bool = False, seeds: int = 3, tasks=TASKS, models=MODELS, guess: bool = True,
        **overrides) -> Result:
    """Success rate vs lag for every model on both tasks; writes ``memory.{md,csv,png}``.

    ``overrides`` replace fields of the default (or quick) :class:`Config`; ``guess=False``
    leaves out random weight guessing.
    """
    seeds = check_seeds(seeds)
    cfg = replace(QUICK if quick else DEFAULT, **overrides)
    out = out_path(out_dir)
    kinds = list(models) + (["guess"] if guess else [])
    res = {}  # (task, kind, T) -> list of dicts per seed
    params = {}
    total = len(tasks) * len(cfg.lags) * len(kinds) * seeds
    with Timer() as timer, single_blas_thread(), progress(total, NAME) as bar:
        for task in tasks:
            for T in cfg.lags:
                sample = _sampler(task, T, cfg)
                for s in range(seeds):
                    test = sample(rng_for(s, NAME, task, T, "test"), cfg.test_size)
                    val = sample(rng_for(s, NAME, task, T, "val"), cfg.val_size)
                    for kind in kinds:
                        bar.set_postfix_str(f"{task} T={T} {kind}")
                        init = rng_for(s, NAME, task, T, kind, "init")
                        steps = 0
                        if kind == "guess":
                            model = random_guess(task, T, cfg, init)
                        else:
                            model = _build(kind, task, T, cfg, init)
                            tc = TrainConfig(steps=cfg.steps, batch=cfg.batch, lr=cfg.lr, clip=cfg.clip)
                            hist = train(model, lambda r: sample(r, cfg.batch), tc,
                                         rng_for(s, NAME, task, T, "data"),
                                         until=lambda m: _success(task, _metric(task, evaluate(m, val)), cfg),
                                         check_every=cfg.check_every)
                            steps = hist.stopped_at or len(hist.loss)
                        ev = evaluate(model, test)
                        m = _metric(task, ev)
                        res.setdefault((task, kind, T), []).append(
                            {"loss": ev["loss"], "metric": m, "success": _success(task, m, cfg),
                             "sequences": steps * cfg.batch})
                        params[(task, kind, T)] = model.num_params()
                        bar.update(1)

    rows = []
    for task in tasks:
        b = baseline(task, cfg)
        for kind in kinds:
            for T in cfg.lags:
                r = res[(task, kind, T)]
                ok = [x["success"] for x in r]
                lm, ls = mean_std(x["loss"] for x in r)
                mm, ms = mean_std(x["metric"] for x in r)
                seqs = [x["sequences"] for x in r if x["success"]]
                rows.append({
                    "task": task, "model": kind, "T": T, "params": params[(task, kind, T)],
                    "success_rate": float(np.mean(ok)), "successes": int(sum(ok)), "seeds": seeds,
                    "metric": "mse" if task == "adding" else "accuracy",
                    "metric_mean": mm, "metric_std": ms, "loss_mean": lm, "loss_std": ls,
                    "baseline_metric": b["metric"], "baseline_loss": b["loss"],
                    "beats_baseline_loss": lm < b["loss"],
                    "median_sequences_to_success": float(np.median(seqs)) if seqs else float("nan"),
                })

    def pivot(cell):
        out_rows = []
        for task in tasks:
            for kind in kinds:
                pr = {"task": task, "model": kind}
                for r in rows:
                    if r["task"] == task and r["model"] == kind:
                        pr[f"T={r['T']}"] = cell(r)
                out_rows.append(pr)
        return out_rows

    rep = Report(NAME, "Experiment `memory`: long time lags (adding problem, copy-memory)",
                 settings={"mode": "quick" if quick else "default", "seeds": seeds, **asdict(cfg)})
    rep.add_table("main", Table(rows, in_md=False))
    rep.add_table("success", Table(pivot(lambda r: f"{r['successes']}/{r['seeds']}"),
                                   title="Success (seeds that met the criterion / seeds)"))
    rep.add_table("metric", Table(pivot(lambda r: pm(r["metric_mean"], r["metric_std"])),
                                  title="Test metric, mean ± std (adding: MSE, baseline 0.0417; "
                                        f"copy: recall accuracy, baseline {1 / cfg.n_symbols:.3f})"))
    rep.add_table("params", Table(pivot(lambda r: r["params"]), title="Parameters"))
    rep.notes += [
        f"Success: adding test MSE < {cfg.adding_success_mse}; copy recall accuracy >= {cfg.copy_success_acc}. "
        f"Budget: at most {cfg.steps} steps of {cfg.batch} fresh sequences ({cfg.steps * cfg.batch} sequences), "
        "early stop when a validation batch succeeds.",
        f"mlp: a fixed window of the last {cfg.mlp_window} steps (like a window language model); mlp-full: window = the "
        "whole sequence (its first layer grows with T); guess: random weight guessing "
        f"({cfg.guesses} random tanh RNNs, best kept).",
    ]
    fig, axes = new_figure(len(tasks), 2, size=(5.0, 3.3))
    for j, task in enumerate(tasks):
        ax, ax2 = axes[0][j], axes[1][j]
        for kind in kinds:
            sel = [r for r in rows if r["task"] == task and r["model"] == kind]
            x = [r["T"] for r in sel]
            ax.plot(x, [r["success_rate"] for r in sel], marker="o", label=kind)
            band(ax2, x, [r["metric_mean"] for r in sel], [r["metric_std"] for r in sel], kind, marker=".")
        b = baseline(task, cfg)["metric"]
        ax2.axhline(b, color="k", ls=":", lw=1, label="memoryless")
        ax.set(xscale="log", title=f"{task}: success rate", xlabel="lag T", ylabel="success rate", ylim=(-0.05, 1.05))
        ax2.set(xscale="log", xlabel="lag T", ylabel="test MSE" if task == "adding" else "recall accuracy")
        if task == "adding":
            ax2.set_yscale("log")
            ax2.axhline(cfg.adding_success_mse, color="grey", ls="--", lw=0.8, label="success")
        else:
            ax2.axhline(cfg.copy_success_acc, color="grey", ls="--", lw=0.8, label="success")
        ax.legend(fontsize=7)
        ax2.legend(fontsize=7)
    rep.figure, rep.figure_caption = fig, "success rate and test metric vs lag"
    paths = rep.write(out)
    return Result(NAME, paths, {k: t.rows for k, t in rep.tables.items()},
                  data={"raw": res, "config": cfg}, seconds=timer.seconds)
