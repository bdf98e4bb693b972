"""SFEW 2.0 (Static Facial Expressions in the Wild, movie frames): ``Train|Val/<Emotion>/*``.

Seven classes as the folders are named in the release: Angry, Disgust, Fear, Happy, Neutral,
Sad, Surprise (958 train / 436 val images). The test split has no public labels. No subject ids.
Images are full movie frames: ``ferkit prepare sfew`` detects and aligns the faces.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

from ferkit.data.dataset import FaceDataset
from ferkit.data.errors import DataError
from ferkit.data.images import IMAGE_EXTENSIONS
from ferkit.data.index import DatasetIndex, Sample, load_index
from ferkit.errors import UsageError

SFEW_CLASSES = ["Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"]
SPLITS = ("Train", "Val")


def index_sfew(root: Union[str, Path], split: str = "Train") -> DatasetIndex:
    root = Path(root)
    folder = root / split if (root / split).is_dir() else root
    if split not in SPLITS:
        raise UsageError(f"SFEW split must be one of {', '.join(SPLITS)}")
    if not folder.is_dir():
        raise DataError(root / split, "SFEW split folder is missing", hint="expected Train|Val/<Emotion>/*")
    lower = {c.lower(): i for i, c in enumerate(SFEW_CLASSES)}
    samples: list[Sample] = []
    emotion_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not emotion_dirs:
        raise DataError(folder, "no emotion folders", hint=f"expected {', '.join(SFEW_CLASSES)}")
    for d in emotion_dirs:
        if d.name.lower() not in lower:
            raise DataError(d, f"unknown SFEW emotion folder {d.name!r}", hint=f"expected {', '.join(SFEW_CLASSES)}")
        samples += [Sample(f, lower[d.name.lower()]) for f in sorted(d.iterdir())
                    if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS]
    return DatasetIndex("sfew", list(SFEW_CLASSES), samples, meta={"split": split})


def load_sfew(root: Union[str, Path], split: str = "Train", size: int = 128, grayscale: bool = True,
              use_cache: bool = True) -> FaceDataset:
    return load_index(index_sfew(root, split), size=size, grayscale=grayscale, use_cache=use_cache)
