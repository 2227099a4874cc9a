"""Writing an experiment's results: a Markdown report, CSV tables and a PNG figure.

An experiment fills a :class:`Report` with tables (lists of row dicts, the first one is the
main table), free-text notes and a matplotlib figure, then calls :meth:`Report.write`::

    out/NAME.md          title, settings, every table as Markdown, notes
    out/NAME.csv         the main table (numbers unformatted: means and stds in their own columns)
    out/NAME_<key>.csv   each further table
    out/NAME.png         the figure

Aggregation over seeds: :func:`mean_std` gives the mean and the sample standard deviation
(``ddof = 1``; 0 for a single seed); Markdown shows ``mean ± std``.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def mean_std(values) -> tuple[float, float]:
    """``(mean, sample std)`` of finite-or-not values; std is 0 for fewer than two values."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def fmt(x, digits: int = 3) -> str:
    """A number for a Markdown cell: ``digits`` significant figures, ints as ints, ``-`` for none."""
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}".replace(",", "\u2009") if abs(int(x)) >= 10000 else str(int(x))
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.{max(digits - 1, 0)}e}"
    return f"{x:.{digits}g}" if abs(x) >= 1 else f"{x:.{digits}f}".rstrip("0").rstrip(".") or "0"


def pm(mean: float, std: float, digits: int = 3) -> str:
    """``"mean ± std"``, both with the same decimals: ``digits`` significant figures of the mean
    (at least ``digits`` decimals, at most 6); e-notation beyond 1e5."""
    mean, std = float(mean), float(std)
    if not (math.isfinite(mean) and math.isfinite(std)) or abs(mean) >= 1e5:
        return f"{fmt(mean, digits)} ± {fmt(std, digits)}"
    mag = math.floor(math.log10(abs(mean))) if mean != 0 else 0
    dec = min(6, max(digits, digits - 1 - mag))
    return f"{mean:.{dec}f} ± {std:.{dec}f}"


@dataclass
class Table:
    """Rows of ``{column: value}``; ``md_columns`` maps Markdown headers to a cell function."""

    rows: list[dict]
    md_columns: dict | None = None
    title: str = ""
    in_md: bool = True  # False: CSV only (long per-step data)

    def markdown(self) -> str:
        cols = self.md_columns or {k: k for k in (self.rows[0] if self.rows else {})}
        head = list(cols)
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
        for r in self.rows:
            cells = []
            for h in head:
                spec = cols[h]
                val = spec(r) if callable(spec) else r.get(spec, "")
                cells.append(fmt(val))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def write_csv(self, path: Path) -> None:
        keys: list[str] = []
        for r in self.rows:
            for k in r:
                if k not in keys:
                    keys.append(k)
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for r in self.rows:
                w.writerow({k: (repr(float(v)) if isinstance(v, float) else v) for k, v in r.items()})  # np.float64 too


@dataclass
class Report:
    """Everything one experiment writes; see the module docstring."""

    name: str
    title: str
    settings: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)  # key -> Table; the first is the main table
    notes: list = field(default_factory=list)
    figure: object = None  # matplotlib Figure
    figure_caption: str = ""

    def add_table(self, key: str, table: Table) -> Table:
        self.tables[key] = table
        return table

    def write(self, out_dir) -> dict:
        """Write md, csv(s) and png into ``out_dir``; returns ``{"md": path, "csv": path, "png": path}``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {}
        md = [f"# {self.title}", ""]
        if self.settings:
            md.append("Settings: " + ", ".join(f"{k} = {v}" for k, v in self.settings.items()) + ".")
            md.append("")
        for i, (key, table) in enumerate(self.tables.items()):
            csv_path = out / (f"{self.name}.csv" if i == 0 else f"{self.name}_{key}.csv")
            table.write_csv(csv_path)
            if table.in_md:
                if table.title:
                    md += [f"## {table.title}", ""]
                md += [table.markdown(), ""]
            else:
                md += [f"{table.title or 'Data of the figure'}: `{csv_path.name}`.", ""]
            if i == 0:
                paths["csv"] = csv_path
        if self.figure is not None:
            png = out / f"{self.name}.png"
            save_png(self.figure, png)
            paths["png"] = png
            md += [f"![{self.figure_caption or self.title}]({png.name})", ""]
        if self.notes:
            md += [f"- {n}" for n in self.notes] + [""]
        md_path = out / f"{self.name}.md"
        md_path.write_text("\n".join(md), encoding="utf-8")
        paths["md"] = md_path
        return paths


def save_png(fig, path, dpi: int = 80) -> None:
    """Save ``fig`` as a small PNG: rendered by Agg, then quantised to a 256-colour palette
    (line plots lose nothing visible, the file shrinks about threefold)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    buf.seek(0)
    with Image.open(buf) as im:
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def new_figure(ncols: int = 1, nrows: int = 1, size=(5.0, 3.6)):
    """A matplotlib figure rendered by Agg, outside pyplot (no display, no global state):
    ``(fig, axes (nrows, ncols))``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def band(ax, x, mean, std, label, **kw):
    """A line with a shaded ±std band."""
    x, mean, std = np.asarray(x), np.asarray(mean, float), np.asarray(std, float)
    (line,) = ax.plot(x, mean, label=label, **kw)
    ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    return line
