"""Classification metrics from predicted and true class indices: accuracy, confusion, per class.

Kept as plain functions over integer tensors/arrays so evaluation, cross-validation and the app
compute the same numbers the same way. Confusion rows are the true class, columns the prediction.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence[int]]


def _ints(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-d array of class indices, got shape {arr.shape}")
    return arr.astype(np.int64)


def accuracy(pred: ArrayLike, target: ArrayLike) -> float:
    """Fraction of ``pred == target``; NaN for no samples (an empty set has no accuracy)."""
    p, t = _ints(pred), _ints(target)
    if p.shape != t.shape:
        raise ValueError(f"pred and target differ in length: {p.shape[0]} vs {t.shape[0]}")
    return float((p == t).mean()) if p.size else float("nan")


def confusion(pred: ArrayLike, target: ArrayLike, num_classes: int) -> np.ndarray:
    """``[K, K]`` int64 counts, ``[true, predicted]``."""
    p, t = _ints(pred), _ints(target)
    if p.shape != t.shape:
        raise ValueError(f"pred and target differ in length: {p.shape[0]} vs {t.shape[0]}")
    for name, a in (("pred", p), ("target", t)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{name} has class indices outside 0..{num_classes - 1}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class(confusion_matrix: Union[np.ndarray, Sequence[Sequence[int]]], classes: Sequence[str]
              ) -> dict[str, dict[str, float]]:
    """Per class: ``accuracy`` (= recall, the share of that class's samples predicted right),
    ``precision``, ``f1`` and ``n`` (true samples). Undefined ratios (0/0) are ``None``."""
    cm = np.asarray(confusion_matrix, dtype=np.int64)
    if cm.shape != (len(classes), len(classes)):
        raise ValueError(f"confusion matrix {cm.shape} does not match {len(classes)} classes")
    out: dict[str, dict[str, float]] = {}
    for i, name in enumerate(classes):
        tp, support, predicted = int(cm[i, i]), int(cm[i].sum()), int(cm[:, i].sum())
        recall = tp / support if support else None
        precision = tp / predicted if predicted else None
        f1 = (2 * precision * recall / (precision + recall)
              if recall is not None and precision is not None and (precision + recall) > 0 else
              (0.0 if recall is not None and precision is not None else None))
        out[name] = {"accuracy": recall, "precision": precision, "f1": f1, "n": support}
    return out


def mean_class_accuracy(confusion_matrix: Union[np.ndarray, Sequence[Sequence[int]]]) -> float:
    """Mean of the per-class recalls over classes that have samples (balanced accuracy)."""
    cm = np.asarray(confusion_matrix, dtype=np.int64)
    support = cm.sum(axis=1)
    present = support > 0
    return float((np.diag(cm)[present] / support[present]).mean()) if present.any() else float("nan")
