"""Loss curves as PNG files (matplotlib's Agg renderer, no display, written atomically).

- :func:`plot_losses` — ``loss.png`` of a run: training and validation loss against steps.
- :func:`plot_curves` — any set of named ``(x, y)`` curves, e.g. validation loss against time.
"""
from __future__ import annotations

import io
import math

from ..io import atomic_write_bytes


def plot_curves(curves: dict, path, xlabel: str, ylabel: str, styles: dict | None = None) -> None:
    """Draw ``{label: (xs, ys)}`` and write the PNG to ``path`` atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for label, (xs, ys) in curves.items():
        if len(xs):
            ax.plot(xs, ys, (styles or {}).get(label, "o-"), label=label, markersize=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def plot_losses(records: list[dict], path) -> None:
    """``loss.png`` from the records of ``metrics.jsonl``."""

    def series(key):
        pts = [(r["step"], r[key]) for r in records
               if isinstance(r.get(key), (int, float)) and math.isfinite(r[key]) and isinstance(r.get("step"), int)]
        return [p[0] for p in pts], [p[1] for p in pts]

    plot_curves({"train": series("train_loss"), "validation": series("val_loss")}, path, "step",
                "loss (nats per character)", styles={"train": "-", "validation": "o-"})
