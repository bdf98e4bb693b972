"""Training curves beside the checkpoint: ``curves.csv`` (every number) and ``curves.png`` (a glance).

Rewritten after every epoch from the run's full history (which the checkpoint carries), so a
resumed run keeps one continuous curve and a killed run still leaves curves up to its last epoch.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

from ferkit.utils.io import atomic_write_bytes, atomic_write_text


def _columns(history: Sequence[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for row in history:
        for key in row:
            if key not in cols:
                cols.append(key)
    return cols


def write_csv(history: Sequence[dict[str, Any]], path: Path) -> None:
    cols = _columns(history)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in cols})
    atomic_write_text(path, buf.getvalue())


def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for row in history:
        v = row.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(int(row["epoch"]))
            ys.append(float(v))
    return xs, ys


def write_png(history: Sequence[dict[str, Any]], path: Path, title: str = "") -> None:
    """Loss panel (every ``*loss*`` column) and accuracy panel (every ``*accuracy*`` column)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # no pyplot: no global state, safe in any thread

    cols = _columns(history)
    fig = Figure(figsize=(10, 4), dpi=100)
    for i, (needle, label) in enumerate((("loss", "loss"), ("accuracy", "accuracy"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for key in cols:
            if needle in key:
                xs, ys = _series(history, key)
                if xs:
                    ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def write_curves(history: Sequence[dict[str, Any]], out_dir: Path, title: str = "") -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    csv_path, png_path = out_dir / "curves.csv", out_dir / "curves.png"
    write_csv(history, csv_path)
    write_png(history, png_path, title)
    return csv_path, png_path
