"""CK+ as distributed: ``cohn-kanade-images/S###/###/S###_###_########.png`` frames and
``Emotion/S###/###/S###_###_########_emotion.txt`` labels (one float, e.g. ``3.0000000e+00``).

Only the 327 sequences with an emotion file are labelled. Label codes: 0 neutral, 1 anger,
2 contempt, 3 disgust, 4 fear, 5 happy, 6 sadness, 7 surprise. Protocols:

* ``"last3"``: the last three frames of each labelled sequence, 7 classes (981 images) -- FERSNet, EIFN.
* ``"last3+neutral"``: those plus the first frame of each sequence labelled neutral, 8 classes
  (1,308 images) -- TFE-JL.

Subjects are the ``S###`` folders (118 people), for subject-independent folds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

from ferkit.data.dataset import FaceDataset
from ferkit.data.errors import DataError
from ferkit.data.images import IMAGE_EXTENSIONS
from ferkit.data.index import DatasetIndex, Sample, load_index
from ferkit.errors import UsageError

CKPLUS_CODES = ["neutral", "anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"]
PROTOCOLS = ("last3", "last3+neutral")


def _find(root: Path, name: str) -> Path:
    for cand in (root / name, *root.glob(f"*/{name}")):
        if cand.is_dir():
            return cand
    raise DataError(root / name, f"folder {name!r} not found",
                    hint="expected cohn-kanade-images/S###/###/*.png and Emotion/S###/###/*_emotion.txt")


def read_emotion_file(path: Path) -> int:
    """The 1..7 code in a CK+ ``*_emotion.txt``; DataError naming the file and line otherwise."""
    lines = [(i, ln.strip()) for i, ln in enumerate(path.read_text(errors="replace").splitlines(), 1) if ln.strip()]
    if len(lines) != 1:
        raise DataError(path, f"expected one emotion code, found {len(lines)} non-empty lines",
                        line=lines[1][0] if len(lines) > 1 else None)
    lineno, text = lines[0]
    try:
        value = float(text)
    except ValueError:
        raise DataError(path, f"emotion code {text!r} is not a number", line=lineno) from None
    if value != int(value) or not 1 <= int(value) <= 7:
        raise DataError(path, f"emotion code {text!r} is not one of 1..7", line=lineno)
    return int(value)


def index_ckplus(root: Union[str, Path], protocol: str = "last3") -> DatasetIndex:
    if protocol not in PROTOCOLS:
        raise UsageError(f"unknown CK+ protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    root = Path(root)
    images_root = _find(root, "cohn-kanade-images")
    emotion_root = _find(root, "Emotion")
    with_neutral = protocol == "last3+neutral"
    classes = CKPLUS_CODES if with_neutral else CKPLUS_CODES[1:]
    samples: list[Sample] = []
    label_files = sorted(emotion_root.glob("S*/*/*_emotion.txt"))
    if not label_files:
        raise DataError(emotion_root, "no *_emotion.txt label files")
    for lf in label_files:
        code = read_emotion_file(lf)
        subject, seq = lf.parent.parent.name, lf.parent.name
        seq_dir = images_root / subject / seq
        if not seq_dir.is_dir():
            raise DataError(lf, f"labelled sequence has no image folder {seq_dir}")
        frames = sorted(p for p in seq_dir.iterdir()
                        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)
        need = 4 if with_neutral else 3
        if len(frames) < need:
            raise DataError(seq_dir, f"sequence has {len(frames)} frames; protocol {protocol} needs {need}")
        label = code if with_neutral else code - 1
        samples += [Sample(f, label, subject) for f in frames[-3:]]
        if with_neutral:
            samples.append(Sample(frames[0], 0, subject))
    return DatasetIndex("ckplus", list(classes), samples, meta={"protocol": protocol, "sequences": len(label_files)})


def load_ckplus(root: Union[str, Path], protocol: str = "last3", size: int = 48, grayscale: bool = True,
                use_cache: bool = True) -> FaceDataset:
    """CK+ frames without face detection (centre square); use ``ferkit prepare ckplus`` for aligned crops."""
    return load_index(index_ckplus(root, protocol), size=size, grayscale=grayscale, use_cache=use_cache)
