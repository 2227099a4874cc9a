"""Experiment ``parallel``: the sequential bottleneck — training-step time and memory against
the sequence length ``T``.

Claim
    A classic RNN's step ``t`` cannot start before step ``t-1`` is done: ``h_{t-1}`` sits inside
    its gates, so each of the ``T`` steps runs its own small ``(B, H) x (H, G*H)`` product, one
    after another, forward and backward. A Transformer or a causal CNN computes all positions of
    a layer at once in a few large products (attention pays ``O(T^2)`` for it). minGRU takes
    ``h_{t-1}`` out of the gates (Feng et al. 2024): all its products are one GEMM over ``T*B``
    rows, and the recurrence left over is the element-wise scan ``h_t = a_t h_{t-1} + b_t``.

Protocol
    For each ``T`` in ``lengths`` and each model, one training step of the char-LM exactly as
    ``rnnlab train`` runs it (``BatchShards`` with the automatic thread plan: forward, loss and
    backward; the optimizer's update, the same for all, is left out) on random ids, batch ``B``,
    width ``H``, one layer, float32. Time: mean ± std over ``seeds`` timed steps after one
    untimed warm-up step. Memory: the peak of NumPy's allocations during one more step, traced
    with ``tracemalloc`` after emptying the workspace pool (so every buffer is counted).

Models: ``lstm``, ``gru`` (compiled loops over time), ``mingru-scan`` (the sequential scan,
compiled), ``mingru-log`` (the parallel log-space scan), ``mingru-loop`` (step mode: the
projection and update one step at a time in Python, as generation runs), ``transformer`` (one
pre-LN block), ``cnn`` (causal dilated convolutions, kernel 2, 6 layers).
"""
from __future__ import annotations

import gc
import time
import tracemalloc
from dataclasses import asdict, dataclass, replace

import numpy as np

from ..lm.shards import BatchShards, plan_shards
from ..models import build_model
from ..nn import workspace
from .common import Result, Timer, check_seeds, out_path, progress, rng_for
from .report import Report, Table, band, mean_std, new_figure, pm

NAME = "parallel"
MODELS = ("lstm", "gru", "mingru-scan", "mingru-log", "mingru-loop", "transformer", "cnn")
V = 65  # vocabulary (tinyshakespeare's)


@dataclass(frozen=True)
class Config:
    lengths: tuple = (64, 128, 256, 512, 1024, 2048)
    batch: int = 16
    hidden: int = 256
    embed: int = 64
    heads: int = 4
    cnn_layers: int = 6
    floor_from: int = 512   # the claim checked: minGRU's scan at least 3x the LSTM's speed from here on


DEFAULT = Config()
QUICK = Config(lengths=(16, 32, 64), batch=4, hidden=32, embed=16, cnn_layers=3, floor_from=64)


def build(name: str, T: int, cfg: Config, rng):
    """The char-LM for ``name`` (one layer of width ``H``), its sequence layer set to the mode
    the name asks for."""
    H, E = cfg.hidden, cfg.embed
    if name in ("lstm", "gru") or name.startswith("mingru"):
        model = build_model({"model": name.split("-")[0], "vocab_size": V, "hidden": H, "layers": 1, "embed": E},
                            rng=rng)
        if name == "mingru-log":
            model.rnn.scan = "log"
        elif name == "mingru-loop":
            model.rnn.mode = "step"
        return model
    if name == "transformer":
        return build_model({"model": "transformer", "vocab_size": V, "hidden": H, "layers": 1, "heads": cfg.heads,
                            "block": T}, rng=rng)
    if name == "cnn":
        return build_model({"model": "cnn", "vocab_size": V, "embed": E, "channels": H, "layers": cfg.cnn_layers,
                            "kernel": 2}, rng=rng)
    raise ValueError(f"unknown model {name!r}")


def measure(name: str, T: int, cfg: Config, repeats: int, seed: int) -> dict:
    """Mean/std seconds of ``repeats`` timed training steps and the traced peak bytes of one."""
    rng = rng_for(seed, NAME, name, T)
    model = build(name, T, cfg, rng)
    B = cfg.batch
    x = rng.integers(0, V, (T, B)).astype(np.int32)
    y = rng.integers(0, V, (T, B)).astype(np.int32)
    shards = plan_shards(model, B)
    times = []
    with BatchShards(model, shards) as run:
        run.step(x, y, None, None, rng)  # warm-up: numba compilation, first-touch memory
        for _ in range(repeats):
            t0 = time.perf_counter()
            run.step(x, y, None, None, rng)
            times.append(time.perf_counter() - t0)
        workspace.release()
        gc.collect()
        tracemalloc.start()
        try:
            run.step(x, y, None, None, rng)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    m, s = mean_std(times)
    return {"model": name, "T": T, "step_ms_mean": 1e3 * m, "step_ms_std": 1e3 * s,
            "chars_per_s": T * B / m, "peak_mb": peak / 2**20, "shards": shards, "parameters": model.num_params()}


def run(out_dir, quick: bool = False, seeds: int = 3, models=MODELS, **overrides) -> Result:
    """Step time and peak memory of each model against ``T``; ``seeds`` = timed steps per point."""
    repeats = check_seeds(seeds)
    cfg = replace(QUICK if quick else DEFAULT, **overrides)
    out = out_path(out_dir)
    rows = []
    with Timer() as timer, progress(len(models) * len(cfg.lengths), NAME) as bar:
        for name in models:
            for T in cfg.lengths:
                rows.append(measure(name, T, cfg, repeats, seed=0))
                bar.update(1)
    by = {(r["model"], r["T"]): r for r in rows}
    for r in rows:
        r["step_ms"] = pm(r["step_ms_mean"], r["step_ms_std"])
        lstm = by.get(("lstm", r["T"]))
        r["speedup_vs_lstm"] = lstm["step_ms_mean"] / r["step_ms_mean"] if lstm else float("nan")

    rep = Report(NAME, "Experiment `parallel`: training-step time and memory against sequence length",
                 settings={"mode": "quick" if quick else "default", "timed steps": repeats,
                           **{k: v for k, v in asdict(cfg).items() if k != "floor_from"}})
    rep.add_table("main", Table(rows, title="One training step (forward, loss, backward), float32",
                                md_columns={"model": "model", "T": "T", "ms per step (mean ± std)": "step_ms",
                                            "chars/s": lambda r: round(r["chars_per_s"]),
                                            "x LSTM speed": "speedup_vs_lstm", "peak MB": "peak_mb",
                                            "threads": "shards"}))
    Ts = list(cfg.lengths)
    wide = []
    for T in Ts:
        row = {"T": T}
        for name in models:
            row[name] = by[(name, T)]["step_ms_mean"]
        wide.append(row)
    rep.add_table("by_length", Table(wide, title="ms per step, by model (columns) and length (rows)"))
    floor = [T for T in Ts if T >= cfg.floor_from]
    if "mingru-scan" in models and "lstm" in models and floor:
        worst = min(by[("mingru-scan", T)]["speedup_vs_lstm"] for T in floor)
        rep.notes.append(f"minGRU (scan) is at least {worst:.1f}x as fast per step as the LSTM for T >= "
                         f"{cfg.floor_from} (the issue's floor: 3x).")
    fig, axes = new_figure(2, 1, size=(5.0, 3.6))
    for name in models:
        ms = [by[(name, T)]["step_ms_mean"] for T in Ts]
        sd = [by[(name, T)]["step_ms_std"] for T in Ts]
        band(axes[0, 0], Ts, ms, sd, name, marker="o", ms=3)
        axes[0, 1].plot(Ts, [by[(name, T)]["peak_mb"] for T in Ts], "o-", ms=3, label=name)
    axes[0, 0].set(xscale="log", yscale="log", xlabel="sequence length T", ylabel="ms per training step",
                   title=f"step time (B={cfg.batch}, H={cfg.hidden})")
    axes[0, 1].set(xscale="log", yscale="log", xlabel="sequence length T", ylabel="peak MB (traced)",
                   title="memory of one step")
    for ax in axes[0]:
        ax.set_xticks(Ts, [str(t) for t in Ts])
        ax.legend(fontsize=7)
    rep.figure, rep.figure_caption = fig, "training-step time and memory against sequence length"
    paths = rep.write(out)
    return Result(NAME, paths, {k: t.rows for k, t in rep.tables.items()}, data={"rows": rows, "config": cfg},
                  seconds=timer.seconds)
