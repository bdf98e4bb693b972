"""`ferkit eval`: accuracy of weights on a folder of already-cropped, labelled faces.

The images are fed exactly as ``ferkit predict`` feeds face crops (:func:`ferkit.inference.to_model_input`
through :meth:`Predictor.predict_tensor`), using the weights' own preprocessing: a dataset stored
at another size or channel count than the model's input is converted the same way live crops
would be. No face detection runs: FER+ and CK+48 images already are the crops the papers used.

Accepted data (detected from the folder):

- FER+ split folder (``label.csv`` beside the PNGs, e.g. ``ferplus/FER2013Valid``); ``vote``
  picks the label rule (``majority``, the papers' protocol, or ``plurality``).
- FER2013 with its original 7-class labels: a folder holding ``fer2013.csv`` or
  ``fer2013_emotion.csv`` (beside the FER+ PNG folders) with ``split`` = ``Training`` |
  ``PublicTest`` | ``PrivateTest`` (FER2013's own "Usage" column).
- CK+48 (``CK+48/<class>/S###_###_########.png`` or the CK+48 folder itself).
- a folder written by ``ferkit prepare`` (``manifest.json`` + chunks, see
  :mod:`ferkit.data.prepared`): faces detected and aligned by the same pipeline as ``predict``.

Dataset class names are matched to the model's by name with the usual synonyms (happy =
happiness, angry = anger, ...); the confusion matrix is over the model's classes. Images of a
class the model cannot predict (FER+'s contempt for a 7-class FER2013 model) are left out and
counted in ``excluded`` -- the accuracy is then over the shared classes, and says so.

``tta``: test-time augmentation, by default the one recorded in the weights' card (the setting
its published numbers were measured with); every result names the one used.

``engine``: ``torch`` (default: the engine the cards' numbers were measured with), ``onnx``,
``onnx-int8`` (static int8 calibrated on the crops in ``calibration``) or ``auto``; comparing the
accuracy of ``onnx-int8`` with ``torch`` is how int8 is judged (it ships only where the drop is
at most 0.5 points). Batches of :data:`EVAL_BATCH` run with the caller's thread setting.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from ferkit.data.classes import canonical
from ferkit.data.dataset import FaceDataset
from ferkit.data.errors import DataError
from ferkit.errors import UsageError
from ferkit.evaluation.metrics import accuracy, confusion, mean_class_accuracy, per_class
from ferkit.utils.io import atomic_write_text

EVAL_BATCH = 256


FER2013_SPLITS = ("Training", "PublicTest", "PrivateTest")


def detect_layout(path: Path, split: Optional[str] = None) -> str:
    """``ferplus`` | ``fer2013`` | ``ckplus48`` | ``prepared``; a DataError saying what was expected otherwise."""
    from ferkit.data.prepared import is_prepared

    has_fer2013 = path.is_file() and path.suffix == ".csv" or any(
        (path / n).is_file() for n in ("fer2013.csv", "fer2013_emotion.csv"))
    if split is not None:
        if split not in FER2013_SPLITS:
            raise DataError(path, f"--split {split!r} is not a FER2013 usage",
                            hint=f"use one of {', '.join(FER2013_SPLITS)}; for FER+ pass the split folder itself")
        if not has_fer2013:
            raise DataError(path, "--split needs FER2013 labels (fer2013.csv or fer2013_emotion.csv) here")
        return "fer2013"
    if not path.is_dir():
        raise DataError(path, "is a file, not a data folder" if path.exists() else "no such folder")
    if is_prepared(path):
        return "prepared"
    from ferkit.data.pack import is_pack, read_manifest

    if is_pack(path):  # the GPU machine's packs read like the folders they stand for
        return "ferplus" if read_manifest(path).get("kind") == "ferplus" else "ckplus48"
    if (path / "label.csv").is_file():
        return "ferplus"
    children = [c for c in ("FER2013Valid", "FER2013Test", "FER2013Train") if (path / c / "label.csv").is_file()]
    if children:
        fer2013 = " or add --split PublicTest for FER2013's 7-class labels" if has_fer2013 else ""
        raise DataError(path, "this is a FER+ root, not a split folder",
                        hint=f"pass one split, e.g. {path / children[0]}{fer2013}")
    root = path / "CK+48" if (path / "CK+48").is_dir() else path
    from ferkit.data.ckplus import is_ckplus48_name

    subdirs = [d for d in root.iterdir() if d.is_dir()]
    if subdirs and any(is_ckplus48_name(f) for d in subdirs for f in list(d.iterdir())[:5]):
        return "ckplus48"
    raise DataError(path, "not a labelled expression data set ferkit reads",
                    hint="expected a FER+ split folder (label.csv + PNGs), CK+48/<class>/S###_###_*.png, "
                         "or a folder written by `ferkit prepare`")


def load_eval_data(path: Union[str, Path], vote: str = "majority",
                   split: Optional[str] = None) -> tuple[FaceDataset, str]:
    """The labelled crops at ``path`` (FER2013 usage ``split`` when given) and the layout name."""
    path = Path(path)
    layout = detect_layout(path, split)
    if layout == "fer2013":
        from ferkit.data.fer2013 import load_fer2013

        return load_fer2013(path, usage=split), layout
    if layout == "ferplus":
        from ferkit.data.ferplus import load_ferplus

        return load_ferplus(path, vote=vote), layout
    if layout == "ckplus48":
        from ferkit.data.ckplus import load_ckplus48

        return load_ckplus48(path), layout
    from ferkit.data.prepared import load_prepared

    return load_prepared(path), layout


def shared_class_mapping(data_classes: list[str], model_classes: list[str]) -> tuple[list[int], list[str]]:
    """Model class index of every dataset class (-1 where the model lacks it) and the lacking names.

    An error naming them when the two share no class at all (an identity net, or the wrong dataset)."""
    model_index = {canonical(c): i for i, c in enumerate(model_classes)}
    mapping = [model_index.get(canonical(c), -1) for c in data_classes]
    missing = [c for c, m in zip(data_classes, mapping) if m < 0]
    if len(missing) == len(data_classes):
        shown = ", ".join(model_classes[:10]) + (f", ... ({len(model_classes)} in all)" if len(model_classes) > 10 else "")
        raise UsageError(f"the data has classes the model does not predict: {', '.join(missing)} "
                         f"(model classes: {shown}); is this an expression model?")
    return mapping, missing


def _seen_in_training(dataset: Any, heldout: Sequence[str]) -> Optional[torch.Tensor]:
    """Mask of the images whose subject the weights trained on, or None when that cannot be told
    (no held-out list in the card, no subject names in the data, or no held-out subject in it)."""
    names = dataset.subject_names
    if not heldout or dataset.subjects is None or not names:
        return None
    heldout_names = set(heldout)
    held = torch.tensor([n in heldout_names for n in names], dtype=torch.bool)
    if not bool(held.any()):
        return None
    return ~held[dataset.subjects]


def evaluate(weights: Union[str, Path], data: Union[str, Path], vote: str = "majority", device: str = "auto",
             report_dir: Union[str, Path, None] = None, batch_size: int = EVAL_BATCH,
             split: Optional[str] = None, tta: Optional[str] = None, engine: str = "torch",
             calibration: Union[str, Path, None] = None,
             onnx_file: Union[str, Path, None] = None, heldout_only: bool = False) -> dict[str, Any]:
    """Accuracy, per-class metrics and the confusion matrix of ``weights`` (name or checkpoint) on ``data``.

    ``onnx_file``: score with this exported file (e.g. an int8 one) instead; ``weights`` still
    names the card whose classes and preprocessing it must share. Weights trained on some subjects
    of a data set with subject ids (a CK+ fold model) say which they held out; ``seen_in_training``
    counts the images of the others, whose accuracy is training accuracy, and ``heldout_only``
    scores the held-out subjects alone (the figure the card reports).
    """
    from ferkit.inference import Predictor

    dataset, layout = load_eval_data(data, vote=vote, split=split)
    if len(dataset) == 0:
        raise DataError(Path(data), "no labelled images to evaluate (all rows dropped by the vote rule?)")
    predictor = Predictor(weights, device=device, tta=tta, engine=engine,
                          calibration=calibration, onnx_file=onnx_file)
    seen = _seen_in_training(dataset, predictor.weights.heldout_identities)
    if heldout_only:
        if seen is None:
            raise UsageError(f"--heldout-only: the card of {predictor.weights.name!r} names no held-out subjects "
                             "of this data (only CK+ fold models do); evaluate every image instead")
        dataset = dataset.subset(~seen)
        if len(dataset) == 0:
            raise DataError(Path(data), f"none of the subjects {predictor.weights.name!r} held out is in this data")
    # every name the result carries in the one spelling the other commands print ("happiness")
    model_classes = [canonical(c) for c in predictor.classes]
    mapping_list, missing = shared_class_mapping(list(dataset.classes), model_classes)
    mapping = torch.tensor(mapping_list)
    target_all = mapping[dataset.labels]
    keep = target_all >= 0
    excluded = {canonical(c): int((dataset.labels == i).sum()) for i, c in enumerate(dataset.classes) if c in missing}
    images = dataset.images[keep]
    target = target_all[keep].numpy()
    if len(images) == 0:
        raise DataError(Path(data), f"no image of a class the model predicts (left out: {excluded})")
    preds = []
    for start in range(0, len(images), batch_size):
        out = predictor.predict_tensor(images[start:start + batch_size])
        preds.append(out.logits.float().argmax(1).cpu())
    pred = torch.cat(preds).numpy()
    cm = confusion(pred, target, len(model_classes))
    pc = per_class(cm, model_classes)
    present = {model_classes[i] for i in np.unique(target)}
    result: dict[str, Any] = {
        "accuracy": accuracy(pred, target),
        "n": int(len(target)),
        "per_class": {k: v for k, v in pc.items() if k in present},
        "mean_class_accuracy": mean_class_accuracy(cm),
        "confusion": cm.tolist(),
        "classes": list(model_classes),
        "vote_rule": dataset.meta.get("vote") if layout == "ferplus" else None,
        "split": split,
        "tta": predictor.tta,
        "engine": predictor.engine,
        "onnx_file": None if onnx_file is None else str(onnx_file),
        "excluded": excluded,
        "seen_in_training": 0 if seen is None or heldout_only else int((seen & keep).sum()),
        "heldout_only": heldout_only,
        "data": str(data),
        "layout": layout,
        "weights": predictor.weights.name,
        "weights_source": predictor.weights.source,
    }
    if report_dir is not None:
        result["report"] = write_report(result, Path(report_dir))
    return result


def per_class_csv(result: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class", "n", "accuracy", "precision", "f1"])
    for name, m in result["per_class"].items():
        w.writerow([name, m["n"], *("" if m[k] is None else f"{m[k]:.4f}" for k in ("accuracy", "precision", "f1"))])
    w.writerow(["(all)", result["n"], f"{result['accuracy']:.4f}", "", ""])
    return buf.getvalue()


def write_report(result: dict[str, Any], out: Path) -> dict[str, str]:
    """``confusion.png`` (counts + row-normalised), ``per_class.csv`` and ``eval.json`` in ``out``."""
    from ferkit.evaluation.plots import save_confusion_png

    out.mkdir(parents=True, exist_ok=True)
    title = (f"{result['weights']} on {Path(result['data']).name}: accuracy {result['accuracy']:.4f} "
             f"(n={result['n']}{', ' + result['vote_rule'] if result.get('vote_rule') else ''})")
    png = save_confusion_png(result["confusion"], result["classes"], out / "confusion.png", title=title)
    csv_path = out / "per_class.csv"
    atomic_write_text(csv_path, per_class_csv(result))
    json_path = out / "eval.json"
    paths = {"confusion_png": str(png), "per_class_csv": str(csv_path), "json": str(json_path)}
    atomic_write_text(json_path, json.dumps({**result, "report": paths}, indent=2) + "\n")
    return paths


def format_table(result: dict[str, Any]) -> str:
    """The human view of an evaluation (what `ferkit eval` prints without --json)."""
    excluded = result.get("excluded") or {}
    lines = [f"{result['weights']} on {result['data']} ({result['layout']}"
             + (f" {result['split']}" if result.get("split") else "")
             + (f", {result['vote_rule']} vote" if result.get("vote_rule") else "")
             + f", tta {result.get('tta', 'none')}"
             + (f", engine {result['engine']}" if result.get("engine", "torch") != "torch" else "") + ")",
             f"accuracy {result['accuracy']:.4f} on {result['n']} images; "
             f"mean class accuracy {result['mean_class_accuracy']:.4f}"
             + ("; left out (the model lacks the class): "
                + ", ".join(f"{k} {v}" for k, v in excluded.items()) if excluded else "")
             + ("; held-out subjects only" if result.get("heldout_only") else ""), "",
             f"{'class':12s} {'n':>6s} {'acc':>7s} {'prec':>7s} {'f1':>7s}"]
    for name, m in result["per_class"].items():
        f = ["   -   " if m[k] is None else f"{m[k]:7.4f}" for k in ("accuracy", "precision", "f1")]
        lines.append(f"{name:12s} {m['n']:6d} {f[0]} {f[1]} {f[2]}")
    if result.get("seen_in_training"):
        lines += ["", f"note: {result['seen_in_training']} of these {result['n']} images show subjects "
                      f"{result['weights']} trained on, so this is mostly training accuracy; "
                      "--heldout-only scores its held-out subjects alone"]
    return "\n".join(lines)

