"""Subject-independent k-fold cross-validation of any fold-capable recipe (``ferkit cv``).

CK+, Oulu-CASIA and MMI have no official test split; the papers report the mean accuracy over
k subject-independent folds (each fold's subjects never seen in training). This module runs the
whole protocol with the ordinary training engine:

1. for fold ``i``, the recipe is built with ``folds=k, fold=i, split_seed=s`` and trained into
   ``<out>/fold-XX/`` (the recipe holds out ``subject_kfold(subjects, k, s)[i]`` itself);
2. the fold's **final** checkpoint (not ``best.pt``: the recipe picks "best" by accuracy on the
   held-out fold, which would be model selection on the test set) is evaluated here, on the same
   held-out indices recomputed from :func:`ferkit.evaluation.kfold.subject_kfold`, feeding the
   images through the weights' own :class:`~ferkit.models.weights.Preprocessing`;
3. the fold result is written to ``<out>/fold-XX/result.json`` and the summary (mean ± std,
   per-fold accuracy, summed confusion matrix) to ``<out>/cv.json``, ``confusion.png`` and
   ``folds.png``.

The report is rewritten after every fold (``complete`` says whether all k folds are in it).
Resuming: a fold whose ``result.json`` matches the run (recipe, k, split seed, epochs) is reused;
a fold with a half-trained ``checkpoint.pt`` continues from it (the engine's resume); a fold
whose checkpoint already reached the epoch count is only evaluated. So ``ferkit cv`` can be
killed at any point and re-run with the same command.
"""
from __future__ import annotations

import csv
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from ferkit.errors import UsageError
from ferkit.evaluation.forward import class_probabilities
from ferkit.evaluation.kfold import format_fold, subject_kfold
from ferkit.evaluation.metrics import confusion
from ferkit.models.weights import Preprocessing, load_weights, to_model_input
from ferkit.training.recipe import Recipe
from ferkit.utils.io import atomic_write_text

Emit = Callable[[dict[str, Any]], None]
EVAL_BATCH = 256


@dataclass
class FoldResult:
    fold: int
    accuracy: float
    n_test: int
    n_train: int
    test_subjects: int
    confusion: list[list[int]]
    checkpoint: str
    epochs: int
    #: the recipe's own last ``val_accuracy`` on the held-out fold (a cross-check; should match)
    recipe_val_accuracy: Optional[float] = None
    train_wall_time_s: Optional[float] = None
    #: test-time augmentation the accuracy was measured with (the card's)
    tta: str = "none"
    #: identifies the run a cached result belongs to
    key: dict[str, Any] = field(default_factory=dict)


def fold_dir(out_dir: Path, fold: int) -> Path:
    return Path(out_dir) / f"fold-{fold:02d}"


#: what a fold's accuracy is measured with; part of every result's key, so results measured another
#: way (before flip TTA was applied here, fold accuracies were single-view) are measured again
EVALUATION = "final checkpoint, the card's TTA"


def predict_labels(model: torch.nn.Module, images: torch.Tensor, prep: Preprocessing,
                   device: torch.device, tta: str = "none") -> torch.Tensor:
    """Predicted classes, with ``tta`` as ``ferkit eval`` and the recipe's validation apply it."""
    if images.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64)
    probs = class_probabilities(model, images, lambda x: to_model_input(x.to(device), prep), tta=tta,
                                batch_size=EVAL_BATCH)
    return probs.argmax(1).cpu()


def _checkpoint_progress(path: Path) -> tuple[int, bool]:
    """(completed epochs, saved mid-epoch) of a training checkpoint."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    return int(state.get("epoch", 0)), bool(state.get("partial_epoch", False))


def _read_result(path: Path, key: dict[str, Any]) -> Optional[FoldResult]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("key") != key:
        return None
    return FoldResult(**data)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _run_fold(recipe_cls: type[Recipe], data_dir: Path, dataset: Any, split: tuple[Any, Any], i: int, folds: int,
              out_dir: Path, key: dict[str, Any], fold_options: dict[str, Any], emit: Emit, *, epochs: int,
              device: str, seed: int, amp: bool, progress_interval: float,
              threads: Union[int, str, None] = None, trained_threads: Optional[set[int]] = None) -> bool:
    """Fold ``i``: its result reused when ``key`` matches, else trained (or resumed) and tested, the
    result written to ``result.json``. False when the training was stopped (Ctrl-C / SIGTERM).
    ``trained_threads`` collects the thread counts the engine reports while the fold trains."""
    from ferkit.training.engine import train

    train_idx, test_idx = split
    fdir = fold_dir(out_dir, i)
    result_path = fdir / "result.json"
    cached = _read_result(result_path, key) if result_path.exists() else None
    if cached is not None:
        _stderr(f"fold {i + 1}/{folds}: reusing {result_path} (accuracy {cached.accuracy:.4f})")
        emit({"event": "fold_end", "time": time.time(), "fold": i, "folds": folds, "reused": True,
              "accuracy": cached.accuracy, "n_test": cached.n_test, "result": str(result_path)})
        return True
    ckpt = fdir / "checkpoint.pt"
    done, partial = _checkpoint_progress(ckpt) if ckpt.exists() else (0, False)
    emit({"event": "fold_start", "time": time.time(), "fold": i, "folds": folds, "n_train": len(train_idx),
          "n_test": len(test_idx), "resume_from_epoch": done if ckpt.exists() else None})
    train_time = None
    if done < epochs or partial:
        _stderr(f"fold {i + 1}/{folds}: training {recipe_cls.name} for {epochs} epochs "
                f"({len(train_idx)} train / {len(test_idx)} test images)"
                + (f", resuming after epoch {done}" if ckpt.exists() else ""))
        recipe = recipe_cls(data_dir, fold_options)

        def relay(event: dict[str, Any]) -> None:
            if trained_threads is not None and isinstance(event.get("threads"), int):
                trained_threads.add(int(event["threads"]))
            emit({**event, "fold": i, "folds": folds})

        end = train(recipe, fdir, epochs=epochs, device=device, resume=ckpt.exists(), seed=seed, amp=amp,
                    progress_interval=progress_interval, on_event=relay, json_lines=False, validate=False,
                    threads=threads)
        if end["status"] != "completed":
            return False
        train_time = end.get("wall_time_s")
    result = evaluate_fold(ckpt, dataset, train_idx, test_idx, i, device, key)
    if train_time is not None:
        result.train_wall_time_s = round(float(train_time), 1)
    atomic_write_text(result_path, json.dumps(asdict(result), indent=2) + "\n")
    _stderr(f"fold {i + 1}/{folds}: accuracy {result.accuracy:.4f} on {result.n_test} held-out images"
            + (f" (recipe's own val_accuracy {result.recipe_val_accuracy:.4f})"
               if result.recipe_val_accuracy is not None else ""))
    emit({"event": "fold_end", "time": time.time(), "fold": i, "folds": folds, "reused": False,
          "accuracy": result.accuracy, "n_test": result.n_test, "result": str(result_path)})
    return True


def run_cv(recipe_cls: type[Recipe], data_dir: Union[str, Path], out_dir: Union[str, Path], *, folds: int = 10,
           options: Optional[dict[str, Any]] = None, epochs: Optional[int] = None, device: str = "auto",
           seed: int = 0, split_seed: int = 0, amp: bool = True, progress_interval: float = 5.0,
           only_folds: Optional[list[int]] = None, emit: Optional[Emit] = None,
           threads: Union[int, str, None] = None) -> dict[str, Any]:
    """Train and test every fold (resumably); returns the ``cv.json`` summary dict.

    ``options`` are the recipe's own options (the fold options are added here). ``only_folds``
    runs a subset (e.g. to spread folds over machines); the summary then covers the folds that
    have results in ``out_dir``. A string option holding ``{fold}`` (or ``{fold:02d}``) is formatted
    with the fold number for that fold (:func:`~ferkit.evaluation.kfold.format_fold`: a later stage
    starts from the same fold's earlier stage); the result key keeps the unformatted template.
    ``threads``: the engine's CPU thread setting of every fold
    (``"auto"``/None: the free cores, re-checked while it trains; see :mod:`ferkit.training.threads`).
    """
    if not getattr(recipe_cls, "supports_folds", False):
        raise UsageError(f"recipe {recipe_cls.name!r} has no subject-independent fold protocol "
                         "(it trains on one split); ferkit cv needs a recipe such as tfe-jl/resnet12-ckplus")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    emit = emit or (lambda event: None)
    target_epochs = int(epochs if epochs is not None else recipe_cls.default_epochs)
    recipe_cls.validate_data(data_dir)
    dataset = recipe_cls.load_dataset(data_dir)
    if dataset.subjects is None:
        raise UsageError(f"{data_dir}: the dataset has no subject ids, so no subject-independent split exists")
    splits = subject_kfold(dataset.subjects, folds, split_seed)  # clear error when folds > subjects
    classes = list(dataset.classes)
    run_folds = list(range(folds)) if only_folds is None else sorted(set(only_folds))
    for f in run_folds:
        if not 0 <= f < folds:
            raise UsageError(f"fold {f} is outside 0..{folds - 1}")
    out_dir.mkdir(parents=True, exist_ok=True)
    base_options = dict(options or {})
    # options left at None (a recipe's "use my default") are not part of the identity of a result, so a
    # recipe that gains a new option does not invalidate finished folds
    key_base = {"recipe": recipe_cls.name, "folds": folds, "split_seed": split_seed, "epochs": target_epochs,
                "evaluation": EVALUATION,
                "seed": seed, "options": {k: v for k, v in sorted(base_options.items()) if v is not None and _jsonable(v)}}
    t0 = time.monotonic()
    #: torch thread counts the folds' training reported this run (CPU; auto may move between them)
    trained_threads: set[int] = set()
    emit({"event": "cv_start", "time": time.time(), "recipe": recipe_cls.name, "data": str(data_dir),
          "out_dir": str(out_dir), "folds": folds, "run_folds": run_folds, "by": "subject",
          "split_seed": split_seed, "epochs": target_epochs, "images": len(dataset),
          "subjects": int(torch.unique(dataset.subjects).numel()), "classes": classes})

    for i in run_folds:
        fold_options = {**{k: format_fold(v, i) for k, v in base_options.items()}, "folds": folds, "fold": i,
                        "split_seed": split_seed,
                        # recipes that size their LR schedule by the run length read "epochs"
                        "epochs": target_epochs}
        if not _run_fold(recipe_cls, data_dir, dataset, splits[i], i, folds, out_dir, {**key_base, "fold": i},
                         fold_options, emit, epochs=target_epochs, device=device, seed=seed, amp=amp,
                         progress_interval=progress_interval, threads=threads, trained_threads=trained_threads):
            emit({"event": "cv_end", "time": time.time(), "status": "interrupted",
                  "message": f"stopped during fold {i}; run the same command again to resume"})
            return {"status": "interrupted", "fold": i}
        # keep cv.json / PNGs current after every fold: a stopped run still has a report of what is done
        write_report(out_dir, summarise(out_dir, folds, key_base, classes, dataset_desc=str(data_dir)))

    summary = summarise(out_dir, folds, key_base, classes, dataset_desc=str(data_dir))
    summary["device"] = device
    summary["wall_time_s_this_run"] = round(time.monotonic() - t0, 1)
    if trained_threads:  # what the folds trained with this run (auto may have moved it), not this process's setting
        from ferkit.training.threads import parse_threads

        summary["threads"] = min(trained_threads) if len(trained_threads) == 1 else sorted(trained_threads)
        summary["threads_setting"] = str(parse_threads(threads))
    write_report(out_dir, summary)
    emit({"event": "cv_end", "time": time.time(), "status": "completed", "mean_accuracy": summary["mean_accuracy"],
          "std_accuracy": summary["std_accuracy"], "folds_done": len(summary["fold_accuracies"]),
          "report": str(out_dir / "cv.json")})
    return summary


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def evaluate_fold(checkpoint: Path, dataset: Any, train_idx: np.ndarray, test_idx: np.ndarray, fold: int,
                  device: str, key: dict[str, Any]) -> FoldResult:
    """Accuracy and confusion of a fold's final checkpoint on its held-out subjects."""
    loaded = load_weights(checkpoint, device=device)
    weights = loaded.weights
    classes = list(dataset.classes)
    if list(weights.classes) != classes:
        raise UsageError(f"{checkpoint}: the model's classes {weights.classes} differ from the dataset's {classes}")
    test = torch.as_tensor(test_idx)
    labels = dataset.labels[test]
    preds = predict_labels(loaded.model, dataset.images[test], weights.preprocessing, loaded.device, weights.tta)
    cm = confusion(preds.numpy(), labels.numpy(), len(classes))
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    recipe_val = (state.get("last_val") or {}).get("val_accuracy")
    return FoldResult(fold=fold, accuracy=float((preds == labels).float().mean()), n_test=int(len(test_idx)),
                      n_train=int(len(train_idx)),
                      test_subjects=int(torch.unique(dataset.subjects[test]).numel()),
                      confusion=cm.tolist(), checkpoint=str(checkpoint), epochs=int(state.get("epoch", 0)),
                      recipe_val_accuracy=None if recipe_val is None else float(recipe_val), key=key,
                      tta=weights.tta or "none")


def peak_epoch_accuracy(fdir: Path) -> Optional[float]:
    """The highest ``val_accuracy`` of any epoch in a fold's ``curves.csv`` (None without one).

    Why it is reported at all: TFE-JL reads its CK+ figures off the validation curve of the held-out
    fold at its peak (its Fig. 5: "can achieve up to 99.24 %"), which picks the epoch on the test
    subjects. ferkit's result is the final epoch's; this number stands beside it, labelled as that
    reading, so a gap to a paper can be split into recipe and protocol. It is never the result.
    """
    path = Path(fdir) / "curves.csv"
    try:
        with path.open(newline="") as f:
            values = [float(row["val_accuracy"]) for row in csv.DictReader(f) if row.get("val_accuracy")]
    except (OSError, KeyError, ValueError):
        return None
    return max(values) if values else None


def summarise(out_dir: Path, folds: int, key_base: dict[str, Any], classes: list[str],
              dataset_desc: str = "") -> dict[str, Any]:
    """The cv.json content from every fold's result.json that belongs to this run."""
    results: list[FoldResult] = []
    for i in range(folds):
        r = _read_result(fold_dir(out_dir, i) / "result.json", {**key_base, "fold": i})
        if r is not None:
            results.append(r)
    if not results:
        raise RuntimeError(f"no fold results in {out_dir}")
    acc = np.array([r.accuracy for r in results])
    peaks = [peak_epoch_accuracy(fold_dir(out_dir, r.fold)) for r in results]
    cm = np.sum([np.array(r.confusion) for r in results], axis=0)
    totals = cm.sum(1)
    recall = np.divide(np.diag(cm), totals, out=np.zeros(len(classes)), where=totals > 0)
    return {
        "recipe": key_base["recipe"], "data": dataset_desc,
        "protocol": {"folds": folds, "by": "subject", "split_seed": key_base["split_seed"],
                     "evaluated": "final-epoch checkpoint of each fold on its held-out subjects, with the "
                                  f"card's test-time augmentation ({', '.join(sorted({r.tta for r in results}))})"},
        "epochs": key_base["epochs"], "seed": key_base["seed"], "options": key_base["options"],
        "folds_done": [r.fold for r in results], "complete": len(results) == folds,
        "mean_accuracy": float(acc.mean()),
        #: sample standard deviation over folds (ddof=1)
        "std_accuracy": float(acc.std(ddof=1)) if acc.size > 1 else 0.0,
        "pooled_accuracy": float(np.trace(cm) / cm.sum()),
        "fold_accuracies": [float(a) for a in acc],
        "classes": classes, "confusion": cm.astype(int).tolist(),
        "per_class_recall": {c: float(r) for c, r in zip(classes, recall)},
        "fold_results": [asdict(r) for r in results],
        #: the paper-style reading (best epoch on the held-out fold, i.e. selected on test data), for comparison
        "peak_epoch_accuracies": peaks,
        "peak_epoch_mean_accuracy": (float(np.mean(peaks)) if peaks and all(p is not None for p in peaks) else None),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }


def write_report(out_dir: Path, summary: dict[str, Any]) -> None:
    from ferkit.evaluation.plots import save_confusion_png, save_fold_bars_png

    out_dir = Path(out_dir)
    k = summary["protocol"]["folds"]
    title = (f"{summary['recipe']}: {len(summary['fold_accuracies'])}/{k}-fold subject-independent, "
             f"{summary['epochs']} epochs — mean {summary['mean_accuracy']:.4f} ± {summary['std_accuracy']:.4f}")
    summary["confusion_png"] = str(save_confusion_png(summary["confusion"], summary["classes"],
                                                      out_dir / "confusion.png", title=title))
    summary["folds_png"] = str(save_fold_bars_png(summary["fold_accuracies"], out_dir / "folds.png", title=title,
                                                      labels=[str(f) for f in summary["folds_done"]]))
    atomic_write_text(out_dir / "cv.json", json.dumps(summary, indent=2) + "\n")
