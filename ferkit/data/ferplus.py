"""FER+ (Microsoft's 10-annotator relabelling of FER2013) in the layout its own tools write.

Layout: ``<split>/label.csv`` (no header) with rows
``ferNNNNNNN.png,"(x, y, w, h)",neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF``
(vote counts of 10 taggers) beside the 48x48 gray PNGs (``FER2013Train``, ``FER2013Valid``,
``FER2013Test``). Rows without the face-box column (an older FERPlus release) are accepted too.

Vote rules (``vote=``), recorded in ``dataset.meta["vote"]``:

* ``"majority"`` (default; the papers' protocol and the FER+ reference code's ``majority`` mode,
  microsoft/FERPlus ``src/ferplus.py::_process_data``): first every category with a single vote
  is zeroed (outlier removal); the image is kept only if its top category then holds *more than
  half* of the remaining votes (unknown and NF included in the total) and that category is one of
  the 8 emotions. Ties can never pass this test, so the label is unambiguous.
* ``"plurality"``: the emotion with the most raw votes among the 8 emotions (no outlier removal).
  The image is dropped when unknown or NF has at least as many votes as that emotion (the
  taggers did not see a clear expression) and when two emotions tie for the top — we do not
  invent an order between emotions (a first-index tie-break, common in public code, inflates
  "neutral").

* ``"votes"`` (training only, for ``--target votes``): every image whose 8 emotion columns hold
  more than half of the votes (it is not mostly unknown / not-a-face); ``labels`` is the
  most-voted emotion (first on ties) and only serves the running training accuracy, the loss
  uses ``soft_labels``. Never used for a reported number: those name majority or plurality.

``soft_labels`` are always filled: the raw vote counts of the 8 emotions divided by their sum
(the FER+ paper's probability target before any outlier removal).
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ferkit.data.cache import cached_dataset
from ferkit.data.dataset import FaceDataset
from ferkit.data.errors import DataError
from ferkit.data.images import read_images
from ferkit.errors import UsageError

FERPLUS_CLASSES = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]
#: all ten vote columns of label.csv, in order
VOTE_COLUMNS = FERPLUS_CLASSES + ["unknown", "NF"]
VOTE_RULES = ("majority", "plurality")
#: rules a training set may be read with (``votes`` keeps every mostly-emotional image)
TRAINING_VOTE_RULES = VOTE_RULES + ("votes",)
SPLITS = {"train": "FER2013Train", "valid": "FER2013Valid", "test": "FER2013Test"}

_BOX = re.compile(r"^\(\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\)$")


def majority_label(votes: np.ndarray) -> Optional[int]:
    """FER+ reference rule on the 10 vote counts; the emotion index or None (image dropped)."""
    v = np.asarray(votes, dtype=np.float64).copy()
    v[v <= 1.0] = 0.0  # a single vote is an outlier
    total = v.sum()
    top = int(np.argmax(v))
    if total <= 0 or v[top] <= 0.5 * total or top >= len(FERPLUS_CLASSES):
        return None
    return top


def plurality_label(votes: np.ndarray) -> Optional[int]:
    """Most-voted of the 8 emotions; None on a tie between emotions or when unknown/NF match it."""
    v = np.asarray(votes, dtype=np.int64)
    emotions = v[: len(FERPLUS_CLASSES)]
    best = int(emotions.max())
    if best <= 0 or int((emotions == best).sum()) > 1 or int(v[len(FERPLUS_CLASSES):].max()) >= best:
        return None
    return int(np.argmax(emotions))


def emotional_label(votes: np.ndarray) -> Optional[int]:
    """Most-voted emotion when the 8 emotions hold more than half of all votes; else None."""
    v = np.asarray(votes, dtype=np.int64)
    emotions = v[: len(FERPLUS_CLASSES)]
    if emotions.sum() <= 0 or 2 * int(emotions.sum()) <= int(v.sum()):
        return None
    return int(np.argmax(emotions))


def vote_label(votes: np.ndarray, vote: str) -> Optional[int]:
    if vote == "majority":
        return majority_label(votes)
    if vote == "plurality":
        return plurality_label(votes)
    if vote == "votes":
        return emotional_label(votes)
    raise UsageError(f"unknown FER+ vote rule {vote!r}; use one of {', '.join(TRAINING_VOTE_RULES)}")


def read_label_csv(label_csv: Union[str, Path]) -> list[tuple[str, np.ndarray, int]]:
    """``(file name, 10 vote counts, line number)`` per row; DataError naming the line if malformed."""
    label_csv = Path(label_csv)
    if not label_csv.is_file():
        raise DataError(label_csv, "label.csv is missing",
                        hint="point at a FER+ split folder such as .../FER2013Train")
    rows: list[tuple[str, np.ndarray, int]] = []
    with open(label_csv, newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if lineno == 1 and row[0].strip().lower() in {"image name", "name", "image"}:
                continue  # tolerate a header line
            if len(row) == 12:
                if not _BOX.match(row[1].strip()):
                    raise DataError(label_csv, f"face box {row[1]!r} is not '(x, y, w, h)'", line=lineno)
                counts = row[2:]
            elif len(row) == 11:
                counts = row[1:]
            else:
                raise DataError(label_csv, f"expected 12 fields (name, box, 10 vote counts), got {len(row)}",
                                line=lineno)
            name = row[0].strip()
            if not name:
                raise DataError(label_csv, "empty image name", line=lineno)
            try:
                votes = np.array([int(c) for c in counts], dtype=np.int64)
            except ValueError:
                raise DataError(label_csv, f"vote counts must be integers, got {counts}", line=lineno) from None
            if (votes < 0).any():
                raise DataError(label_csv, "negative vote count", line=lineno)
            rows.append((name, votes, lineno))
    if not rows:
        raise DataError(label_csv, "label.csv has no rows")
    return rows


def resolve_split(folder: Union[str, Path], split: Optional[str] = None) -> Path:
    """``folder`` itself if it holds label.csv (or is a prepared FER+ folder), else its
    FER2013Train/Valid/Test child for ``split``."""
    folder = Path(folder)
    if split is not None:
        folder = folder / SPLITS.get(split.lower(), split)
    if (folder / "manifest.json").is_file() and not (folder / "label.csv").is_file():
        return folder  # a `ferkit prepare ferplus` output; load_ferplus reads it
    if (folder / "pack.json").is_file():
        return folder  # a pack of this split (scripts/pack_training_data.py); load_ferplus reads it
    if not (folder / "label.csv").is_file():
        children = [c for c in SPLITS.values() if (folder / c / "label.csv").is_file()]
        hint = (f"it holds {', '.join(children)}: pass one of those folders" if children
                else "expected FER+ layout: <split>/label.csv beside the PNGs")
        raise DataError(folder / "label.csv", "no FER+ label.csv here", hint=hint)
    return folder


def training_folder(data_dir: Union[str, Path]) -> Path:
    """The training folder of a FER+ recipe's ``--data``: its FER2013Train, or ``data_dir`` itself."""
    data_dir = Path(data_dir)
    return resolve_split(data_dir, "train" if (data_dir / SPLITS["train"]).is_dir() else None)


def validation_folder(train_dir: Path) -> Optional[Path]:
    """FER2013Valid beside a training folder when it holds FER+ labels (label.csv or a pack), else None."""
    candidate = Path(train_dir).parent / SPLITS["valid"]
    return candidate if any((candidate / f).is_file() for f in ("label.csv", "pack.json")) else None


def load_ferplus(folder: Union[str, Path], vote: str = "majority", split: Optional[str] = None,
                 grayscale: bool = True, size: Optional[int] = None, use_cache: bool = True) -> FaceDataset:
    """One FER+ split as a :class:`FaceDataset` (8 classes :data:`FERPLUS_CLASSES`).

    ``vote`` is ``"majority"`` (default, the papers' protocol) or ``"plurality"``; see the module
    docstring. The rule is stored in ``meta["vote"]`` and the number of dropped rows in
    ``meta["dropped"]``. ``size`` resizes (None keeps 48x48); ``grayscale=False`` gives 3 channels.
    """
    if vote not in TRAINING_VOTE_RULES:
        raise UsageError(f"unknown FER+ vote rule {vote!r}; use one of {', '.join(TRAINING_VOTE_RULES)}")
    from ferkit.data.prepared import is_prepared, load_prepared

    if split is None and is_prepared(folder):  # the output of `ferkit prepare ferplus ...`
        ds = load_prepared(folder, size=size, grayscale=grayscale)
        if ds.meta.get("vote") != vote:
            raise DataError(Path(folder) / "manifest.json",
                            f"prepared with vote rule {ds.meta.get('vote')!r}, {vote!r} was asked for",
                            hint="prepare again with --vote " + vote)
        return ds
    folder = resolve_split(folder, split)
    from ferkit.data.pack import is_pack

    if is_pack(folder):
        return _load_ferplus_pack(folder, vote, grayscale, size)
    label_csv = folder / "label.csv"
    rows = read_label_csv(label_csv)
    kept = [(name, votes, line) for name, votes, line in rows if vote_label(votes, vote) is not None]
    files = [folder / name for name, _, _ in kept]

    def build() -> FaceDataset:
        return _ferplus_dataset(folder, vote, kept, len(rows), read_images(files, grayscale=grayscale, size=size))

    params = {"folder": str(folder.resolve()), "vote": vote, "grayscale": grayscale, "size": size}
    return cached_dataset("ferplus", params, [label_csv, *files], build, use_cache=use_cache)


def _ferplus_dataset(folder: Path, vote: str, kept: list[tuple[str, np.ndarray, int]], n_rows: int,
                     images: torch.Tensor) -> FaceDataset:
    """The kept rows of a split (name, votes, line) and their images -> labels, vote distributions, meta."""
    labels = torch.tensor([vote_label(v, vote) for _, v, _ in kept], dtype=torch.int64)
    emo = np.stack([v[: len(FERPLUS_CLASSES)] for _, v, _ in kept]).astype(np.float32) if kept \
        else np.zeros((0, len(FERPLUS_CLASSES)), np.float32)
    soft = torch.from_numpy(emo / np.maximum(emo.sum(axis=1, keepdims=True), 1.0))
    return FaceDataset(images=images, labels=labels, classes=list(FERPLUS_CLASSES), subjects=None,
                       soft_labels=soft, paths=[str(folder / name) for name, _, _ in kept],
                       meta={"dataset": "ferplus", "split": folder.name, "vote": vote,
                             "rows": n_rows, "dropped": n_rows - len(kept)})


def _load_ferplus_pack(folder: Path, vote: str, grayscale: bool, size: Optional[int]) -> FaceDataset:
    """A packed FER+ split, filtered by ``vote`` exactly as the csv rows are."""
    from ferkit.data.pack import ferplus_pack_rows
    from ferkit.data.prepared import convert_images

    rows, images = ferplus_pack_rows(folder)
    keep = [i for i, (_, v, _) in enumerate(rows) if vote_label(v, vote) is not None]
    ds = _ferplus_dataset(folder, vote, [rows[i] for i in keep], len(rows),
                          images[torch.as_tensor(keep, dtype=torch.int64)])
    ds.meta["pack"] = str(folder)
    return convert_images(ds, size, grayscale)


def index_ferplus(folder: Union[str, Path], vote: str = "majority", split: Optional[str] = None):
    """The kept images of a split as a :class:`~ferkit.data.index.DatasetIndex` (for ``ferkit prepare``)."""
    from ferkit.data.index import DatasetIndex, Sample

    folder = resolve_split(folder, split)
    samples = []
    for name, votes, _ in read_label_csv(folder / "label.csv"):
        label = vote_label(votes, vote)
        if label is not None:
            samples.append(Sample(folder / name, label))
    return DatasetIndex("ferplus", list(FERPLUS_CLASSES), samples, meta={"split": folder.name, "vote": vote},
                        cropped=True)
