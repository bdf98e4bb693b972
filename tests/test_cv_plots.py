"""Report figures: valid PNGs, row normalisation by hand, no pyplot global state."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from ferkit.evaluation.plots import row_normalise, save_confusion_png, save_fold_bars_png, save_roc_png

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_row_normalise_by_hand() -> None:
    cm = np.array([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    assert row_normalise(cm).tolist() == [[0.75, 0.25, 0.0], [0.0, 0.0, 0.0], [0.25, 0.25, 0.5]]


def test_figures_are_pngs_and_leave_no_pyplot_figures(tmp_path: Path) -> None:
    had_pyplot = "matplotlib.pyplot" in sys.modules
    before = sys.modules["matplotlib.pyplot"].get_fignums() if had_pyplot else None
    paths = [
        save_confusion_png([[5, 1], [2, 7]], ["a", "b"], tmp_path / "cm.png", title="t"),
        save_fold_bars_png([0.9, 0.8, 1.0], tmp_path / "folds.png", labels=["0", "3", "7"]),
        save_roc_png([0, 0, 0.5, 1], [0, 0.5, 1, 1], tmp_path / "roc.png", auc=0.875, eer=0.25),
    ]
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 2000
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files
    if not had_pyplot:
        assert "matplotlib.pyplot" not in sys.modules  # the library never touches pyplot
    else:  # pyplot was imported by someone else: we must not have added figures to its registry
        assert sys.modules["matplotlib.pyplot"].get_fignums() == before


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="shape"):
        save_confusion_png([[1, 2]], ["a", "b"], "/tmp/x.png")
    with pytest.raises(ValueError, match="no fold results"):
        save_fold_bars_png([], "/tmp/x.png")
    with pytest.raises(ValueError, match="equal length"):
        save_roc_png([0, 1], [0], "/tmp/x.png")
