"""``rnnlab compare``: every model kind under the same wall-clock budget on the same text.

Each model is trained by the common :class:`~rnnlab.lm.trainer.Trainer` (same data, same split,
same optimiser, constant learning rate) into its own run directory ``OUT/<model>/``, so each can
be sampled and evaluated afterwards. Every model's kernels are compiled before its clock starts,
so a fresh install's compilation does not eat into the recurrent models' budgets alone. The
result is one table — parameters, training speed, best validation loss in nats and bits per
character, and the test loss of the best checkpoint when the split has a test part — and a plot
of validation loss against time.
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import replace
from pathlib import Path

from ..errors import RnnlabError
from ..io import atomic_write_text, read_jsonl
from ..models import MODEL_KINDS
from .config import TrainConfig
from .corpus import Corpus
from .plot import plot_curves
from .rundir import RunDir
from .trainer import Trainer, write_run_files

# Sizes chosen so that the neural models have parameter counts of the same order (~100-300k for
# V = 65) and the budget, not the size, decides.
COMPARE_SIZES = {
    "bigram": {},
    "mlp": {"context": 8, "embed": 24, "hidden": 256, "layers": 1},
    "cnn": {"embed": 32, "hidden": 128, "layers": 5, "kernel": 2},
    "rnn": {"embed": 64, "hidden": 256, "layers": 1},
    "lstm": {"embed": 64, "hidden": 192, "layers": 1},
    "gru": {"embed": 64, "hidden": 192, "layers": 1},
    "mingru": {"embed": 64, "hidden": 256, "layers": 2},
    "minlstm": {"embed": 64, "hidden": 256, "layers": 2},
    "bow": {"embed": 64, "hidden": 256},
    "transformer": {"hidden": 96, "layers": 3, "heads": 4},
}


def parse_models(spec: str) -> list[str]:
    models = [m.strip() for m in spec.split(",") if m.strip()]
    bad = [m for m in models if m not in MODEL_KINDS]
    if not models or bad:
        raise RnnlabError(f"--models takes a comma-separated list of {', '.join(MODEL_KINDS)}; got {spec!r}")
    return models


def train_with_budget(cfg: TrainConfig, corpus: Corpus, out: Path, budget: float, evals: int = 12,
                      progress: bool = True, log=None) -> dict:
    """Train ``cfg`` for ``budget`` seconds in run directory ``out`` (replaced if present); returns
    the row of the comparison table and the validation curve. ``log`` hears the compilation
    notice."""
    with RunDir.create(out, force=True) as run:
        write_run_files(run, cfg, corpus)
        trainer = Trainer(cfg, corpus, run, progress=progress, log=lambda s: None)
        trainer.compile_kernels(notify=log)  # before any step is timed
        # calibrate the evaluation interval: about `evals` validations within the budget
        t0 = time.perf_counter()
        probe = []
        while len(probe) < 3 or time.perf_counter() - t0 < min(2.0, budget / 20):
            probe.append(trainer.train_step())
        per_step = (time.perf_counter() - t0) / len(probe)
        trainer.elapsed = time.perf_counter() - t0
        cfg.eval_every = max(1, int(budget / per_step / evals))
        result = trainer.fit()
        if result.already_done:  # the probe alone spent the budget (a slow model or a busy machine)
            trainer._evaluate_and_save(float(sum(probe) / len(probe)), 0.0)
            trainer._close_shards()
            result = replace(result, best_val=trainer.best_val)
        test = _test_loss(trainer)
    records = read_jsonl(run.metrics)
    curve = [(r["time"], r["val_loss"]) for r in records if isinstance(r.get("val_loss"), (int, float))]
    chars_per_step = cfg.batch * cfg.seq_len if corpus.mode == "stream" else None
    cps = chars_per_step / per_step if chars_per_step else result.chars_per_s or math.nan  # nan: probe only
    return {"model": cfg.model, "parameters": trainer.model.num_params(), "steps": result.step,
            "chars_per_s": cps, "best_val": result.best_val,
            "bits_per_char": result.best_val / math.log(2) if math.isfinite(result.best_val) else math.nan,
            "test_loss": test, "curve": curve, "run": str(out)}


def _test_loss(trainer) -> float:
    """The test split's loss (nats/char) under the best checkpoint, NaN without a test split."""
    from .evaluate import evaluate
    from .trainer import load_model_weights

    test, best = trainer.corpus.split.test, trainer.run.checkpoint_path("best")
    if not len(test) or not best.is_file():
        return math.nan
    load_model_weights(trainer.model, best)
    with trainer.make_plan().batch_shards(trainer.model) as shards:
        return evaluate(trainer.model, test, trainer.corpus.mode, trainer.cfg.batch, trainer.cfg.seq_len,
                        shards=shards)["loss_nats"]


def compare(corpus: Corpus, models: list[str], budget: float, out: Path, base: TrainConfig,
            progress: bool = True, log=print) -> list[dict]:
    rows = []
    for name in models:
        cfg = replace(base, model=name, schedule="constant", max_steps=10**9, max_time=float(budget),
                      **COMPARE_SIZES[name]).validate()
        log(f"[{name}] training for {budget:g} s ...")
        row = train_with_budget(cfg, corpus, out / name, budget, progress=progress, log=log)
        log(f"[{name}] {row['parameters']:,} parameters, {row['steps']} steps, best val {row['best_val']:.4f} nats/char")
        rows.append(row)
    write_report(rows, budget, out, corpus)
    return rows


def table_markdown(rows: list[dict], budget: float, corpus: Corpus) -> str:
    lines = [f"Budget {budget:g} s per model on {corpus.source} ({corpus.describe()}).", "",
             "| model | parameters | steps | chars/s | best val loss (nats/char) | bits/char | test loss |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['parameters']:,} | {r['steps']:,} | {r['chars_per_s']:,.0f} | "
                     f"{r['best_val']:.4f} | {r['bits_per_char']:.4f} | {r.get('test_loss', math.nan):.4f} |")
    return "\n".join(lines) + "\n"


def write_report(rows: list[dict], budget: float, out: Path, corpus: Corpus) -> None:
    out.mkdir(parents=True, exist_ok=True)
    md = table_markdown(rows, budget, corpus)
    atomic_write_text(out / "compare.md", md)
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", "parameters", "steps", "chars_per_s", "best_val_nats", "bits_per_char", "test_nats"])
    for r in rows:
        w.writerow([r["model"], r["parameters"], r["steps"], f"{r['chars_per_s']:.1f}", f"{r['best_val']:.6f}",
                    f"{r['bits_per_char']:.6f}", f"{r.get('test_loss', math.nan):.6f}"])
    atomic_write_text(out / "compare.csv", buf.getvalue())
    _plot(rows, out / "compare.png")


def _plot(rows, path) -> None:
    curves = {f"{r['model']} ({r['parameters']:,} params)": tuple(zip(*r["curve"])) if r["curve"] else ((), ())
              for r in rows}
    plot_curves(curves, path, "training time (s)", "validation loss (nats per character)")
