"""Experiments ``context`` and ``compare``: language models on real text.

``context`` — **Claim.** A fixed-window model predicts the next character from exactly its last
``K`` characters; its parameters grow with ``K`` (the first layer is ``K*E x hidden``) and it can
use nothing older. A recurrent model's parameters do not depend on how far back it looks. The
experiment trains the window MLP (Bengio et al. 2003) with ``K = 1, 2, 4, 8, 16`` and RNN, LSTM,
GRU sized to a comparable parameter count, each for the same number of steps with the common
char-LM trainer, and reports validation bits per character and parameters against ``K``.

``compare`` — every model kind (bigram, mlp, cnn, rnn, lstm, gru) under the same wall-clock
budget on the same text: :mod:`rnnlab.lm.compare`, averaged over seeds.

The text is a path (``text=``) or, by default, the built-in corpus (Python's standard library
source), cut to a size that keeps the default run within minutes.
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..lm.compare import COMPARE_SIZES, train_with_budget
from ..lm.config import TrainConfig
from ..lm.corpus import build_corpus, load_text
from .common import Result, Timer, check_seeds, out_path, progress, run_cells, single_blas_thread
from .report import Report, Table, band, mean_std, new_figure, pm

NAME = "context"


@dataclass(frozen=True)
class Config:
    max_chars: int = 400_000          # the text is cut to this many characters
    steps: int = 1500                 # training steps per model and seed (context)
    evals: int = 10                   # validation passes per run; the best counts
    batch: int = 32
    seq_len: int = 64
    contexts: tuple = (1, 2, 4, 8, 16)
    mlp_embed: int = 16
    mlp_hidden: int = 192
    rec_embed: int = 32
    rec_hidden: dict = None           # per cell, sized near the K=8 MLP's parameter count
    budget: float = 30.0              # seconds per model and seed (compare)


DEFAULT = Config(rec_hidden={"rnn": 256, "lstm": 128, "gru": 144})
QUICK = Config(max_chars=40_000, steps=25, batch=16, seq_len=32, contexts=(1, 4, 16), mlp_hidden=64,
               rec_hidden={"rnn": 64, "lstm": 32, "gru": 40}, budget=2.0)


def _corpus(text_path, cfg: Config, seed: int):
    text, source = load_text(text_path)
    text = text[: cfg.max_chars]
    return build_corpus(text, source, lines=False, val_frac=0.1, test_frac=0.0, seed=seed)


def _train_steps(tcfg: TrainConfig, corpus, work: Path) -> tuple[float, int]:
    """Best validation loss (nats/char) and parameters after ``tcfg.max_steps`` steps."""
    from ..lm.rundir import RunDir
    from ..lm.trainer import Trainer, write_run_files

    with RunDir.create(work, force=True) as run:
        write_run_files(run, tcfg, corpus)
        trainer = Trainer(tcfg, corpus, run, progress=False, log=lambda s: None)
        result = trainer.fit()
        return result.best_val, trainer.model.num_params()


def _models(cfg: Config) -> list:
    return [("mlp", k) for k in cfg.contexts] + [(c, None) for c in ("rnn", "lstm", "gru")]


def cell(p: dict) -> dict:
    """One trial: model ``p["kind"]`` (window ``p["k"]`` for the MLP) trained for ``steps`` steps
    with seed ``p["seed"]``: its best validation bits per character and its parameters."""
    cfg = Config(**{**p["config"], "contexts": tuple(p["config"]["contexts"])})
    kind, k, s = p["kind"], p["k"], int(p["seed"])
    corpus = _corpus(p["text"], cfg, seed=s)
    base = TrainConfig(model=kind, batch=cfg.batch, seq_len=cfg.seq_len, max_steps=cfg.steps,
                       eval_every=max(1, cfg.steps // cfg.evals), warmup=cfg.steps // 10, lr=3e-3, seed=1000 + s,
                       val_frac=0.1, test_frac=0.0, threads=1)
    if kind == "mlp":
        tcfg = replace(base, context=k, embed=cfg.mlp_embed, hidden=cfg.mlp_hidden, layers=1)
    else:
        tcfg = replace(base, embed=cfg.rec_embed, hidden=cfg.rec_hidden[kind], layers=1)
    with tempfile.TemporaryDirectory() as tmp:
        val, n = _train_steps(tcfg.validate(), corpus, Path(tmp) / "run")
    return {"val_bpc": val / math.log(2), "params": int(n)}


def run(out_dir, quick: bool = False, seeds: int = 3, text=None, workers: int = 0, backend: str = "local",
        address=None, resume: bool = False, progress: bool = True, **overrides) -> Result:
    """Bits per character of the window MLP for each K against recurrent models; every
    (model, seed) is a trial, run in parallel."""
    seeds = check_seeds(seeds)
    cfg = replace(QUICK if quick else DEFAULT, **overrides)
    out = out_path(out_dir)
    models = _models(cfg)
    text = str(Path(text).resolve()) if text else None
    cells = {f"{kind}{'' if k is None else f'_K={k}'}_seed={s}": {"kind": kind, "k": k, "seed": s, "text": text,
                                                                "config": asdict(cfg)}
             for s in range(seeds) for kind, k in models}
    with Timer() as timer:
        res = run_cells(NAME, cells, out, workers=workers, backend=backend, address=address, resume=resume,
                        progress=progress)
    raw = {m: [] for m in models}
    params = {}
    for s in range(seeds):
        for kind, k in models:
            r = res[f"{kind}{'' if k is None else f'_K={k}'}_seed={s}"]
            raw[(kind, k)].append(r["val_bpc"])
            params[(kind, k)] = r["params"]
    rows = []
    for kind, k in models:
        m, sd = mean_std(raw[(kind, k)])
        rows.append({"model": kind if k is None else f"mlp K={k}", "context": "unbounded" if k is None else k,
                     "parameters": params[(kind, k)], "val_bpc_mean": m, "val_bpc_std": sd,
                     "val_bpc": pm(m, sd)})
    rep = Report(NAME, "Experiment `context`: how much context a character model can use",
                 settings={"mode": "quick" if quick else "default", "seeds": seeds, "text": text or "built-in corpus",
                           **{k: v for k, v in asdict(cfg).items() if k != "budget"}})
    rep.add_table("main", Table(rows, md_columns={"model": "model", "context (chars)": "context",
                                                  "parameters": "parameters", "val bits/char (mean ± std)": "val_bpc"}))
    rep.notes += [
        f"Every model trains for {cfg.steps} steps with the same data, optimiser (Adam, cosine schedule) and batch; "
        f"validation is the last 10% of the text, scored {cfg.evals} times per run (the best counts).",
        "The MLP's parameters grow linearly with K (its first layer is K*E x hidden); the recurrent models' do not "
        "depend on how far back they look.",
    ]
    fig, axes = new_figure(2, 1, size=(4.6, 3.4))
    ax1, ax2 = axes[0]
    ks = list(cfg.contexts)
    mlp = [(mean_std(raw[("mlp", k)])) for k in ks]
    band(ax1, ks, [m for m, _ in mlp], [s for _, s in mlp], "mlp (window K)")
    for c in ("rnn", "lstm", "gru"):
        m, s = mean_std(raw[(c, None)])
        ax1.axhline(m, ls="--", lw=1, label=f"{c} ({params[(c, None)]:,} params)", color={"rnn": "C1", "lstm": "C2", "gru": "C3"}[c])
    ax1.set(xscale="log", xlabel="MLP context K (characters)", ylabel="validation bits/char", title="loss vs context")
    ax1.legend(fontsize=7)
    ax2.plot(ks, [params[("mlp", k)] for k in ks], "o-", label="mlp")
    for c in ("rnn", "lstm", "gru"):
        ax2.axhline(params[(c, None)], ls="--", lw=1, label=c, color={"rnn": "C1", "lstm": "C2", "gru": "C3"}[c])
    ax2.set(xscale="log", xlabel="context K", ylabel="parameters", title="parameters vs context")
    ax2.legend(fontsize=7)
    rep.figure, rep.figure_caption = fig, "validation bits/char and parameters vs MLP context"
    paths = rep.write(out)
    return Result(NAME, paths, {k: t.rows for k, t in rep.tables.items()}, data={"raw": raw, "params": params},
                  seconds=timer.seconds)


def run_compare(out_dir, quick: bool = False, seeds: int = 3, text=None, **overrides) -> Result:
    """Every model kind under the same wall-clock budget (see :mod:`rnnlab.lm.compare`)."""
    seeds = check_seeds(seeds)
    cfg = replace(QUICK if quick else DEFAULT, **overrides)
    out = out_path(out_dir)
    kinds = list(COMPARE_SIZES)
    res = {k: [] for k in kinds}
    with Timer() as timer, single_blas_thread(), tempfile.TemporaryDirectory() as tmp, \
            progress(len(kinds) * seeds, "compare") as bar:
        for s in range(seeds):
            corpus = _corpus(text, cfg, seed=s)
            for kind in kinds:
                sizes = COMPARE_SIZES[kind]
                if quick:
                    sizes = {**sizes, **({"hidden": 32} if "hidden" in sizes else {})}
                tcfg = TrainConfig(model=kind, batch=cfg.batch, seq_len=cfg.seq_len, schedule="constant",
                                   max_steps=10**9, max_time=cfg.budget, seed=1000 + s, val_frac=0.1,
                                   test_frac=0.0, **sizes).validate()
                res[kind].append(train_with_budget(tcfg, corpus, Path(tmp) / f"{kind}-{s}", cfg.budget,
                                                   progress=False))
                bar.update(1)
    rows = []
    for kind in kinds:
        rs = res[kind]
        m, sd = mean_std([r["bits_per_char"] for r in rs])
        cm, _ = mean_std([r["chars_per_s"] for r in rs])
        rows.append({"model": kind, "parameters": rs[0]["parameters"], "chars_per_s": round(cm),
                     "val_bpc_mean": m, "val_bpc_std": sd, "val_bpc": pm(m, sd)})
    rep = Report("compare", "Experiment `compare`: every model under the same time budget",
                 settings={"mode": "quick" if quick else "default", "seeds": seeds, "budget_s": cfg.budget,
                           "text": text or "built-in corpus", "max_chars": cfg.max_chars})
    rep.add_table("main", Table(rows, md_columns={"model": "model", "parameters": "parameters",
                                                  "chars/s": "chars_per_s", "best val bits/char (mean ± std)": "val_bpc"}))
    fig, axes = new_figure(1, 1, size=(5.5, 3.6))
    ax = axes[0, 0]
    for kind in kinds:
        curve = res[kind][0]["curve"]
        if curve:
            xs, ys = zip(*curve)
            ax.plot(xs, [y / math.log(2) for y in ys], "o-", ms=3, label=kind)
    ax.set(xlabel="training time (s)", ylabel="validation bits/char", title="validation loss vs time (seed 0)")
    ax.legend(fontsize=7)
    rep.figure, rep.figure_caption = fig, "validation loss against time"
    paths = rep.write(out)
    return Result("compare", paths, {k: t.rows for k, t in rep.tables.items()}, data={"runs": res},
                  seconds=timer.seconds)
