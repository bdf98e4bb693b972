"""The PNG figures a researcher expects next to a result: confusion matrix, per-fold bars, ROC.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas directly, never through
``pyplot``: pyplot keeps a global registry of open figures (a leak in a long-running app or a
10-fold loop) and picks a GUI backend from the environment, which would drag Qt or Tk into the
library. Each function returns the written path; files are written atomically so an interrupted
run never leaves a truncated PNG that looks like a result.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ferkit.utils.io import atomic_write_bytes

PathLike = Union[str, Path]


def _save(fig: Figure, path: PathLike, dpi: int = 120) -> Path:
    FigureCanvasAgg(fig)  # attach a non-GUI canvas; no pyplot state involved
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def row_normalise(confusion: np.ndarray) -> np.ndarray:
    """Each row (true class) divided by its total; rows without samples stay 0 (not NaN)."""
    cm = np.asarray(confusion, dtype=np.float64)
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)


def _matrix_panel(ax, matrix: np.ndarray, classes: Sequence[str], title: str, fmt: str, vmax: float) -> None:
    k = len(classes)
    ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=vmax if vmax > 0 else 1.0)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticklabels(classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = (vmax if vmax > 0 else 1.0) / 2.0
    for i in range(k):
        for j in range(k):
            value = matrix[i, j]
            ax.text(j, i, format(value, fmt), ha="center", va="center", fontsize=8,
                    color="white" if value > threshold else "black")


def save_confusion_png(confusion: Union[np.ndarray, Sequence[Sequence[int]]], classes: Sequence[str],
                       path: PathLike, title: str = "") -> Path:
    """Counts and row-normalised (recall per true class) side by side; rows = true, columns = predicted."""
    cm = np.asarray(confusion, dtype=np.int64)
    k = len(classes)
    if cm.shape != (k, k):
        raise ValueError(f"confusion matrix has shape {cm.shape} for {k} classes")
    norm = row_normalise(cm)
    side = max(4.0, 0.6 * k + 2.0)
    fig = Figure(figsize=(2 * side + 0.5, side + 0.6))
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"wspace": 0.45})
    _matrix_panel(ax1, cm, classes, f"counts (n={int(cm.sum())})", "d", float(cm.max()) if cm.size else 1.0)
    _matrix_panel(ax2, norm, classes, "row-normalised (recall)", ".2f", 1.0)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def save_fold_bars_png(accuracies: Sequence[float], path: PathLike, title: str = "",
                       ylabel: str = "accuracy", labels: Optional[Sequence[str]] = None) -> Path:
    """One bar per fold with the mean (line) and ±1 std (band): shows how much folds disagree."""
    acc = np.asarray(accuracies, dtype=np.float64)
    if acc.size == 0:
        raise ValueError("no fold results to plot")
    mean, std = float(acc.mean()), float(acc.std(ddof=1)) if acc.size > 1 else 0.0
    fig = Figure(figsize=(max(4.0, 0.5 * acc.size + 2.0), 3.6))
    ax = fig.subplots()
    xs = np.arange(acc.size)
    bars = ax.bar(xs, acc, color="#4c72b0")
    ax.axhline(mean, color="#c44e52", linewidth=1.5, label=f"mean {mean:.4f} ± {std:.4f}")
    ax.axhspan(mean - std, mean + std, color="#c44e52", alpha=0.12)
    for bar, value in zip(bars, acc):
        ax.text(bar.get_x() + bar.get_width() / 2, value, f"{value:.3f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(xs)
    if labels is not None and len(labels) != acc.size:
        raise ValueError(f"{len(labels)} labels for {acc.size} bars")
    ax.set_xticklabels(list(labels) if labels is not None else [str(i) for i in xs])
    ax.set_xlabel("fold")
    ax.set_ylabel(ylabel)
    low = float(min(acc.min(), mean - std))
    ax.set_ylim(max(0.0, low - 0.05), float(acc.max()) + 0.05)
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def save_roc_png(fpr: Sequence[float], tpr: Sequence[float], path: PathLike, auc: Optional[float] = None,
                 eer: Optional[float] = None, title: str = "") -> Path:
    """ROC curve (true-positive vs false-positive rate) with the chance diagonal and the EER point."""
    fpr_a = np.asarray(fpr, dtype=np.float64)
    tpr_a = np.asarray(tpr, dtype=np.float64)
    if fpr_a.shape != tpr_a.shape or fpr_a.ndim != 1 or fpr_a.size < 2:
        raise ValueError("fpr and tpr must be 1-d arrays of equal length >= 2")
    fig = Figure(figsize=(4.6, 4.4))
    ax = fig.subplots()
    label = "ROC" + (f" (AUC {auc:.4f})" if auc is not None else "")
    ax.plot(fpr_a, tpr_a, color="#4c72b0", linewidth=1.8, label=label)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="chance")
    if eer is not None:
        ax.plot([eer], [1.0 - eer], "o", color="#c44e52", label=f"EER {eer:.4f}")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)
