"""``loss.png``: training and validation loss against steps (matplotlib, no display needed)."""
from __future__ import annotations

import io
import math

from ..io import atomic_write_bytes


def plot_losses(records: list[dict], path) -> None:
    """Draw the curves of ``metrics.jsonl`` records and write the PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key):
        pts = [(r["step"], r[key]) for r in records
               if isinstance(r.get(key), (int, float)) and math.isfinite(r[key]) and isinstance(r.get("step"), int)]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for key, label, style in (("train_loss", "train", "-"), ("val_loss", "validation", "o-")):
        xs, ys = series(key)
        if xs:
            ax.plot(xs, ys, style, label=label, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per character)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
