"""Experiment ``sharing``: parameter sharing over time — parameters and FLOPs as sequences grow.

Claim
    A recurrent network applies the same ``W_xh, W_hh, b_h`` at every step, so its parameter
    count does not depend on the sequence length ``T`` and its cost grows linearly in ``T``:

    .. math:: P_{rnn} = G H (I + H + 1) + O (H + 1), \\qquad
              F_{rnn}(T) = 2 T \\, G H (I + H) + 2 O H

    (``G`` = 1, 4, 3 for RNN, LSTM, GRU; FLOPs count 2 per multiply-add of the matrix products,
    element-wise work left out). An MLP that reads the whole sequence has a first layer with
    ``T I H`` weights: parameters *and* FLOPs grow linearly in ``T``, and producing an output at
    every step with a sliding window costs ``T`` times that, ``O(T^2)``. A causal CNN shares its
    kernels over time, but must stack ``ceil(log2 T)`` dilated layers (kernel 2) for its receptive
    field to cover ``T`` steps: parameters ``O(log T)``, FLOPs ``O(T log T)``.

Protocol
    For each ``T``: build each model with :mod:`rnnlab.experiments.seqmodels` (input ``I``,
    hidden/channels ``H``, output ``O``), read the parameter count from ``num_params()`` and
    compute the FLOPs from the parameter arrays' shapes (:func:`flops`). As a check on the
    counts, time one forward pass over a batch (wall clock, mean ± std over ``seeds`` repeats
    with different initialisations and inputs; these depend on the machine).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from . import seqmodels
from .common import Result, Timer, check_seeds, out_path, progress, rng_for, single_blas_thread
from .report import Report, Table, mean_std, new_figure, pm

NAME = "sharing"
MODELS = ("rnn", "lstm", "gru", "mlp", "cnn")


@dataclass
class Config:
    lengths: tuple = (10, 20, 50, 100, 200, 500, 1000)
    input_size: int = 8
    hidden: int = 64
    out: int = 8
    time_batch: int = 16


DEFAULT = Config()
QUICK = Config(lengths=(10, 50, 200), hidden=32)


def build(kind: str, T: int, cfg: Config, rng):
    """The model for sequences of length ``T``: the MLP's window and the CNN's depth follow ``T``."""
    I, H, O = cfg.input_size, cfg.hidden, cfg.out
    if kind == "mlp":
        return seqmodels.build("mlp", I, O, hidden=H, window=T, rng=rng)
    if kind == "cnn":
        return seqmodels.build("cnn", I, O, hidden=H, cnn_layers=max(1, math.ceil(math.log2(T))), rng=rng)
    return seqmodels.build(kind, I, O, hidden=H, rng=rng)


def _matrix_flops(w) -> int:
    """2 FLOPs per weight: one multiply-add per weight for every vector it is applied to."""
    return 2 * int(w.size)


def flops(model, T: int, every_step: bool = False) -> int:
    """Forward FLOPs for one sequence of length ``T``, from the parameter shapes.

    ``every_step=False``: one output at the end; ``True``: an output after every step.

    - recurrent: ``T * 2 (|W_xh| + |W_hh|)`` plus ``2 |W_hy|`` per output;
    - MLP: ``2 sum |W_i|`` per output (a sliding window re-reads ``W`` steps for every output);
    - CNN: ``T * 2 sum |K_l|`` for the convolutions (computed at every position, as implemented)
      plus ``2 |W_out|`` per output.
    """
    n_out = T if every_step else 1
    if isinstance(model, seqmodels.RecurrentSeq):
        step = sum(_matrix_flops(w) for k, w in model.rnn.params.items() if k.startswith("W_"))
        return T * step + n_out * _matrix_flops(model.out.weight)
    if isinstance(model, seqmodels.WindowMLPSeq):
        per_out = sum(_matrix_flops(layer.weight) for layer in model.mlp.layers)
        return n_out * per_out
    if isinstance(model, seqmodels.CausalCNNSeq):
        conv = sum(_matrix_flops(c.params["weight"]) for c in model.convs)
        return T * conv + n_out * _matrix_flops(model.out.weight)
    raise TypeError(f"no FLOP count for {type(model).__name__}")


def _time_forward(model, T: int, cfg: Config, rng) -> float:
    """Seconds for one forward pass over ``time_batch`` random sequences (best of 3 calls)."""
    x = rng.standard_normal((T, cfg.time_batch, cfg.input_size)).astype(np.float32)
    model.eval()
    model.forward(x)  # warm-up (numba compilation, caches)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        model.forward(x)
        best = min(best, time.perf_counter() - t0)
    return best


def run(out_dir, quick: bool = False, seeds: int = 3, models=MODELS, **overrides) -> Result:
    """Parameters, FLOPs and forward time vs sequence length; writes ``sharing.{md,csv,png}``."""
    seeds = check_seeds(seeds)
    cfg = replace(QUICK if quick else DEFAULT, **overrides)
    out = out_path(out_dir)
    rows = []
    with Timer() as timer, single_blas_thread(), progress(len(cfg.lengths) * len(models), NAME) as bar:
        for T in cfg.lengths:
            for kind in models:
                times, params = [], set()
                for s in range(seeds):
                    rng = rng_for(s, NAME, kind, T)
                    model = build(kind, T, cfg, rng)
                    params.add(model.num_params())
                    times.append(_time_forward(model, T, cfg, rng) * 1e3)
                assert len(params) == 1  # the count depends on the shapes only
                tm, ts = mean_std(times)
                rows.append({"model": kind, "T": T, "params": params.pop(),
                             "flops_one_output": flops(model, T), "flops_every_step": flops(model, T, True),
                             "sees_last": "all" if math.isinf(model.window()) else int(model.window()),
                             "forward_ms_mean": tm, "forward_ms_std": ts})
                bar.update(1)

    def pivot(cell):
        return [{"model": k, **{f"T={r['T']}": cell(r) for r in rows if r["model"] == k}} for k in models]

    rep = Report(NAME, "Experiment `sharing`: parameters and FLOPs as the sequence grows",
                 settings={"mode": "quick" if quick else "default", "seeds": seeds, **asdict(cfg)})
    rep.add_table("main", Table(rows, in_md=False))
    rep.add_table("params", Table(pivot(lambda r: r["params"]), title="Parameters (num_params())"))
    rep.add_table("flops_one", Table(pivot(lambda r: float(r["flops_one_output"])),
                                     title="Forward FLOPs per sequence, one output at the end"))
    rep.add_table("flops_every", Table(pivot(lambda r: float(r["flops_every_step"])),
                                       title="Forward FLOPs per sequence, an output at every step"))
    rep.add_table("time", Table(pivot(lambda r: pm(r["forward_ms_mean"], r["forward_ms_std"])),
                                title=f"Measured forward time, ms per batch of {cfg.time_batch} (mean ± std over {seeds} seeds)"))
    rep.notes += [
        f"I = {cfg.input_size} inputs, H = {cfg.hidden} hidden units (CNN channels), O = {cfg.out} outputs. "
        "mlp: window = T (one hidden layer); cnn: kernel 2, ceil(log2 T) layers with dilations 1, 2, 4, ... (receptive field >= T).",
        "Parameter counts and FLOPs are exact and seed-independent; only the timings vary.",
        "FLOPs count the matrix products (2 per multiply-add), not the element-wise work. "
        "The CNN computes every position in one pass whether one output or all are wanted.",
        "Timing: one forward call (the recurrent models and the CNN produce every step's output in it, the MLP "
        "one output). The recurrent models run T sequential small steps, the MLP and CNN a few large GEMMs, so "
        "wall-clock time need not follow FLOPs.",
    ]
    fig, axes = new_figure(2, 2, size=(4.6, 3.3))
    panels = [("params", "parameters"), ("flops_one_output", "FLOPs, one output"),
              ("flops_every_step", "FLOPs, output every step"), ("forward_ms_mean", "forward ms (measured)")]
    for ax, (key, title) in zip(axes.ravel(), panels):
        for k in models:
            sel = [r for r in rows if r["model"] == k]
            ax.plot([r["T"] for r in sel], [r[key] for r in sel], marker="o", ms=3, label=k)
        ax.set(xscale="log", yscale="log", title=title, xlabel="sequence length T")
        ax.legend(fontsize=7)
    rep.figure, rep.figure_caption = fig, "parameters, FLOPs and time vs sequence length"
    paths = rep.write(out)
    return Result(NAME, paths, {k: t.rows for k, t in rep.tables.items()}, data={"config": cfg}, seconds=timer.seconds)
