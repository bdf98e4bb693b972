"""A dataset as a list of labelled files, before any decoding.

Readers of full-frame datasets (CK+, Oulu-CASIA, MMI, SFEW, Yale, LFW) first build a
:class:`DatasetIndex`: the protocol's files with labels and subjects, fully validated (every file
exists, every label line parses) so a bad copy stops the run before any training. ``ferkit
prepare`` feeds the index to the face pipeline; :func:`load_index` decodes it directly (centre
square, resized) for data that already is cropped or for quick looks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np
import torch

from ferkit.data.cache import cached_dataset
from ferkit.data.dataset import FaceDataset
from ferkit.data.errors import DataError
from ferkit.data.images import DATASET_FILE_HINT, read_image, to_chw


@dataclass
class Sample:
    path: Path
    label: int
    subject: Optional[str] = None


@dataclass
class DatasetIndex:
    """``name`` of the reader, ``classes``, the ``samples`` and how they were chosen (``meta``).

    ``cropped`` is True when the files already are face crops (no detection needed).
    """

    name: str
    classes: list[str]
    samples: list[Sample]
    meta: dict[str, Any] = field(default_factory=dict)
    cropped: bool = False

    def __len__(self) -> int:
        return len(self.samples)

    def subject_names(self) -> Optional[list[str]]:
        if any(s.subject is None for s in self.samples):
            return None
        return sorted({s.subject for s in self.samples}, key=str)  # type: ignore[arg-type]

    def check_files(self) -> None:
        """DataError for the first listed file that does not exist."""
        for s in self.samples:
            if not s.path.is_file():
                raise DataError(s.path, "image file is missing", hint="restore it; the protocol needs every file")

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount([s.label for s in self.samples], minlength=len(self.classes))
        return dict(zip(self.classes, counts.tolist()))


def center_square(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    side = min(h, w)
    y, x = (h - side) // 2, (w - side) // 2
    sq = image[y:y + side, x:x + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(sq, (size, size), interpolation=interp)


def load_index(index: DatasetIndex, size: int = 48, grayscale: bool = True, use_cache: bool = True) -> FaceDataset:
    """Decode an index without detection: centre square of each image, resized to ``size``."""
    index.check_files()
    files = [s.path for s in index.samples]
    names = index.subject_names()

    def build() -> FaceDataset:
        c = 1 if grayscale else 3
        images = np.empty((len(files), c, size, size), np.uint8)
        for i, f in enumerate(files):
            images[i] = to_chw(center_square(read_image(f, grayscale, hint=DATASET_FILE_HINT), size))
        subjects = None
        if names is not None:
            pos = {n: i for i, n in enumerate(names)}
            subjects = torch.tensor([pos[s.subject] for s in index.samples], dtype=torch.int64)
        return FaceDataset(images=torch.from_numpy(images),
                           labels=torch.tensor([s.label for s in index.samples], dtype=torch.int64),
                           classes=list(index.classes), subjects=subjects, paths=[str(f) for f in files],
                           subject_names=names, meta={"dataset": index.name, **index.meta, "crop": "center"})

    params = {"index": index.name, "meta": index.meta, "size": size, "grayscale": grayscale,
              "labels": [s.label for s in index.samples], "subjects": [s.subject for s in index.samples]}
    return cached_dataset(f"index-{index.name}", params, files, build, use_cache=use_cache)
