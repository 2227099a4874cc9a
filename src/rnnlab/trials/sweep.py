"""``rnnlab sweep``: a grid (or a random part of one) of char-LM training runs, run as trials.

::

    DIR/sweep.json            what was asked: text, base options, grid, random subset, seeds
    DIR/trials/<name>/        one normal run directory per trial (rnnlab sample/eval/info work
                              on it), plus the trial's trial.json, reports.jsonl, result.json
    DIR/results.csv, .md      one row per trial, sorted by validation loss
    DIR/sweep.png             validation curves of every trial; best loss against each option

A trial is named by its swept options and seed (``hidden=256_lr=0.003_seed=1337``). Its
function, :func:`train_trial`, starts the run or, when the folder already holds a checkpoint,
resumes it exactly (an interrupted sweep continues where each trial stopped), and reports every
validation to the runner, which may stop it early (ASHA over the validation loss).
"""
from __future__ import annotations

import argparse
import itertools
import math
from dataclasses import fields
from pathlib import Path

import numpy as np

from ..errors import RnnlabError
from ..io import atomic_write_json, read_json, read_jsonl
from . import Trial, TrialInterrupted

FORMAT = "rnnlab-sweep"
TRIAL_FN = "rnnlab.trials.sweep:train_trial"
NOT_SWEEPABLE = {"extra", "device"}


# ------------------------------------------------------------------------------------ the grid
def parse_grid(specs: list[str], converters: dict) -> dict:
    """``["hidden=128,256", "lr=1e-3,3e-3"]`` -> ``{"hidden": [128, 256], "lr": [0.001, 0.003]}``.

    ``converters`` maps an option's name (as on the command line, ``seq-len`` or ``seq_len``) to
    the function that parses one value (the same one ``rnnlab train`` uses).
    """
    grid: dict = {}
    for spec in specs:
        name, eq, values = spec.partition("=")
        key = name.strip().lstrip("-").replace("-", "_")
        if not eq or not values.strip():
            raise RnnlabError(f"--grid {spec!r}: expected OPTION=V1,V2,... (e.g. --grid hidden=128,256)")
        if key not in converters:
            raise RnnlabError(f"--grid {spec!r}: unknown option {name!r}; sweepable options: "
                              f"{', '.join(sorted(k.replace('_', '-') for k in converters))}")
        if key in grid:
            raise RnnlabError(f"--grid names {name!r} twice; give all its values in one --grid")
        vals = []
        for v in values.split(","):
            try:
                vals.append(converters[key](v.strip()))
            except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
                raise RnnlabError(f"--grid {spec!r}: value {v.strip()!r}: {exc}") from None
        if len(set(map(repr, vals))) != len(vals):
            raise RnnlabError(f"--grid {spec!r}: a value is given twice")
        grid[key] = vals
    return grid


def grid_points(grid: dict, random: int = 0, seed: int = 0) -> list[dict]:
    """Every combination of the grid's values (the first option varies slowest), or ``random``
    of them drawn without replacement (a seeded random search over the grid)."""
    keys = list(grid)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))] or [{}]
    if random:
        if random > len(points):
            raise RnnlabError(f"--random {random} asks for more points than the grid has ({len(points)})")
        pick = np.random.default_rng([seed, 0x5EE9]).choice(len(points), size=random, replace=False)
        points = [points[i] for i in sorted(pick)]
    return points


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v).lower() if isinstance(v, bool) else str(v)


def trial_name(point: dict, seed: int) -> str:
    parts = [f"{k.replace('_', '-')}={_fmt(v)}" for k, v in point.items()]
    return "_".join(parts + [f"seed={seed}"])


def make_trials(text: str, base, points: list[dict], seeds: int) -> list[Trial]:
    """One trial per grid point and seed (``base.seed``, ``base.seed + 1``, ...); every point's
    configuration is checked before anything runs."""
    from ..lm.config import TrainConfig

    trials = []
    for point in points:
        for k in range(seeds):
            cfg = TrainConfig(**{**base.to_dict(), **point, "seed": base.seed + k})
            try:
                cfg.validate()
            except RnnlabError as exc:
                what = ", ".join(f"{o.replace('_', '-')}={_fmt(v)}" for o, v in point.items())
                raise RnnlabError(f"grid point {what}: {exc}") from None
            trials.append(Trial(trial_name(point, cfg.seed), TRIAL_FN, {"text": text, "train": cfg.to_dict()}))
    return trials


def sweepable(train_options) -> dict:
    """Converters for every ``rnnlab train`` option a sweep may vary: ``{dest: parse}``."""
    from ..lm.config import TrainConfig

    names = {f.name for f in fields(TrainConfig)} - NOT_SWEEPABLE
    return {dest: typ for _, dest, typ, _ in train_options if dest in names}


# ------------------------------------------------------------------------------------ sweep.json
def sweep_spec(text: str, sha256: str, base, grid: dict, random: int, seeds: int) -> dict:
    return {"format": FORMAT, "version": 1, "text": text, "sha256": sha256, "base": base.to_dict(),
            "grid": grid, "random": random, "seeds": seeds}


def check_resume(path: Path, spec: dict) -> None:
    """Refuse ``--resume`` on a folder that holds no sweep, or a sweep of another grid."""
    f = path / "sweep.json"
    if not f.is_file():
        raise RnnlabError(f"nothing to resume in {path}: it holds no sweep (no sweep.json); start the sweep "
                          "without --resume")
    old = read_json(f, "sweep description")
    if not isinstance(old, dict) or old.get("format") != FORMAT:
        raise RnnlabError(f"{f} is not an rnnlab sweep description")
    for key, what in (("grid", "grid"), ("random", "--random"), ("seeds", "--seeds"), ("base", "training options"),
                      ("sha256", "text")):
        if old.get(key) != spec[key]:
            raise RnnlabError(f"--resume: this sweep was made with another {what} ({_describe(old.get(key))}, now "
                              f"{_describe(spec[key])}); repeat the original command with --resume, or start a new "
                              "sweep in another folder")


def _describe(v) -> str:
    s = ", ".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else str(v)
    return s if len(s) < 160 else s[:157] + "..."


def write_spec(path: Path, spec: dict) -> None:
    atomic_write_json(path / "sweep.json", spec)


# ------------------------------------------------------------------------------------ the trial
def train_trial(params: dict, ctx) -> dict:
    """Train one configuration in the trial's folder (a normal run directory); resume it if it
    holds a checkpoint. Reports every validation; ends early when the runner asks."""
    from ..lm.config import TrainConfig
    from ..lm.corpus import corpus_for, load_text, text_digest
    from ..lm.evaluate import evaluate
    from ..lm.rundir import RunDir
    from ..lm.trainer import Trainer, load_model_weights, read_run, write_run_files

    cfg = TrainConfig.from_dict(params["train"], source="trial.json")
    text, source = load_text(params["text"])
    resume = RunDir(ctx.dir).last.is_file()

    def on_eval(record: dict) -> bool:
        return ctx.report(**{k: v for k, v in record.items() if k in ("step", "time", "train_loss", "val_loss")},
                          best_val=trainer.best_val if math.isfinite(trainer.best_val) else None)

    with RunDir.create(ctx.dir, force=not resume, resume=resume) as run:
        if resume:
            cfg, data, vocab = read_run(run)
            if text_digest(text) != data.get("sha256"):
                raise RnnlabError(f"{source} changed since this trial started; restore it or start the sweep over")
            corpus = corpus_for(text, source, cfg, vocab)
        else:
            corpus = corpus_for(text, source, cfg)
            write_run_files(run, cfg, corpus)
        del text
        trainer = Trainer(cfg, corpus, run, progress=False, log=lambda s: None, on_eval=on_eval)
        if resume:
            trainer.restore()
        res = trainer.fit()
        if res.interrupted and not ctx.should_stop():
            raise TrialInterrupted(f"interrupted at step {res.step}")
        out = {"steps": res.step, "seconds": round(trainer.elapsed, 3), "chars_per_s": round(res.chars_per_s, 1),
               "best_val": res.best_val if math.isfinite(res.best_val) else None,
               "last_train": res.last_train if math.isfinite(res.last_train) else None}
        if len(corpus.split.test) and run.best.is_file():
            load_model_weights(trainer.model, run.best)
            with trainer.make_plan().batch_shards(trainer.model) as shards:
                t = evaluate(trainer.model, corpus.split.test, corpus.mode, cfg.batch, cfg.seq_len, shards=shards)
            out["test_loss"] = t["loss_nats"]
        return out


# ------------------------------------------------------------------------------------ results
def result_rows(trials: list[Trial], results, grid: dict) -> list[dict]:
    """One row per trial, sorted by best validation loss (trials without one last)."""
    rows = []
    for t, r in zip(trials, results):
        cfg = t.params["train"]
        res = r.result or {}
        bv = res.get("best_val")
        row = {"trial": t.name, **{k.replace("_", "-"): cfg[k] for k in grid}, "seed": cfg["seed"],
               "status": r.status, "steps": res.get("steps", res.get("step")),
               "seconds": res.get("seconds", res.get("time")), "best_val": bv,
               "bits_per_char": bv / math.log(2) if isinstance(bv, (int, float)) else None,
               "test_loss": res.get("test_loss"), "error": r.error}
        rows.append(row)
    rows.sort(key=lambda row: (row["best_val"] is None, row["best_val"] if row["best_val"] is not None else 0.0))
    return rows


def write_results(out: Path, rows: list[dict], grid: dict, trials_dir: Path, title: str) -> dict:
    """``results.csv``, ``results.md`` and ``sweep.png``; returns their paths."""
    from ..experiments.report import Table, new_figure, save_png

    table = Table(rows, md_columns={"trial": "trial", **{k.replace("_", "-"): k.replace("_", "-") for k in grid},
                                    "seed": "seed", "status": "status", "steps": "steps", "seconds": "seconds",
                                    "best val (nats/char)": "best_val", "bits/char": "bits_per_char",
                                    "test (nats/char)": "test_loss", "error": "error"})
    paths = {"csv": out / "results.csv", "md": out / "results.md", "png": out / "sweep.png"}
    table.write_csv(paths["csv"])
    paths["md"].write_text(f"# {title}\n\n{table.markdown()}\n", encoding="utf-8")
    swept = [k for k in grid if len(grid[k]) > 1] or list(grid)
    fig, axes = new_figure(1 + len(swept), 1, size=(4.6, 3.4))
    ax = axes[0][0]
    for row in rows:
        recs = read_jsonl(trials_dir / row["trial"] / "metrics.jsonl") if (trials_dir / row["trial"] /
                                                                          "metrics.jsonl").is_file() else []
        pts = [(r["step"], r["val_loss"]) for r in recs if isinstance(r.get("val_loss"), (int, float))]
        if pts:
            ax.plot(*zip(*pts), marker=".", lw=1, label=row["trial"] if len(rows) <= 8 else None)
    ax.set(title="validation loss", xlabel="step", ylabel="nats/char")
    if len(rows) <= 8:
        ax.legend(fontsize=6)
    for j, k in enumerate(swept, start=1):
        a = axes[0][j]
        col = k.replace("_", "-")
        pts = [(row[col], row["best_val"]) for row in rows if row["best_val"] is not None]
        if pts:  # the grid's values as evenly spaced categories, in order
            labels = sorted(set(p[0] for p in pts), key=lambda v: (str(type(v)), v))
            a.scatter([labels.index(p[0]) for p in pts], [p[1] for p in pts])
            a.set_xticks(range(len(labels)), [_fmt(v) for v in labels])
            a.set_xlim(-0.5, len(labels) - 0.5)
        a.set(title=f"best validation loss vs {col}", xlabel=col, ylabel="nats/char")
    save_png(fig, paths["png"])
    return paths
