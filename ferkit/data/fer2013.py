"""FER2013 with its original 7-class labels, from either of the two forms it is found in.

1. The ICML 2013 challenge file ``fer2013.csv``: header ``emotion,pixels,Usage``; ``pixels`` is
   2304 space-separated gray values of a 48x48 face; ``Usage`` is Training / PublicTest /
   PrivateTest.
2. ``fer2013_emotion.csv`` (as shipped in this project's data): header
   ``row,Usage,Image name,emotion,ambiguous`` giving the original label of each FER+ PNG, joined
   with the PNGs in ``FER2013Train`` (Training), ``FER2013Valid`` (PublicTest) and ``FER2013Test``
   (PrivateTest) beside the csv. ``ambiguous=1`` marks duplicate images whose copies carry
   different labels; ``drop_ambiguous=True`` (default) leaves them out.

Labels: 0 angry, 1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral (the challenge order).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

import numpy as np
import torch

from ferkit.data.cache import cached_dataset
from ferkit.data.dataset import FaceDataset
from ferkit.data.errors import DataError
from ferkit.data.images import read_images
from ferkit.errors import UsageError

FER2013_CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
USAGES = ("Training", "PublicTest", "PrivateTest")
USAGE_FOLDERS = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}

csv.field_size_limit(1 << 24)


def _usages(usage: Union[None, str, Iterable[str]]) -> Optional[set[str]]:
    if usage is None:
        return None
    wanted = {usage} if isinstance(usage, str) else set(usage)
    bad = wanted - set(USAGES)
    if bad:
        raise UsageError(f"unknown FER2013 usage {sorted(bad)}; use {', '.join(USAGES)}")
    return wanted


def find_csv(path: Path, hint: str = "pass the csv file or the folder that holds it") -> Path:
    """``path`` itself when it is a file, else the fer2013.csv or fer2013_emotion.csv in it."""
    if path.is_file():
        return path
    for name in ("fer2013.csv", "fer2013_emotion.csv"):
        if (path / name).is_file():
            return path / name
    raise DataError(path, "no fer2013.csv or fer2013_emotion.csv found", hint=hint)


def load_fer2013(path: Union[str, Path], usage: Union[None, str, Iterable[str]] = "Training",
                 drop_ambiguous: bool = True, grayscale: bool = True, size: Optional[int] = None,
                 use_cache: bool = True) -> FaceDataset:
    """FER2013 (7 classes :data:`FER2013_CLASSES`) rows whose ``Usage`` is in ``usage`` (None = all).

    ``path``: ``fer2013.csv``, ``fer2013_emotion.csv`` or a folder holding one of them. The form is
    told from the csv header. ``meta`` records the source form, the usage filter and ambiguity rule.
    """
    csv_path = find_csv(Path(path))
    wanted = _usages(usage)
    with open(csv_path, newline="") as fh:
        header = [h.strip() for h in next(csv.reader(fh), [])]
    params = {"csv": str(csv_path.resolve()), "usage": sorted(wanted) if wanted else None,
              "drop_ambiguous": drop_ambiguous, "grayscale": grayscale, "size": size}
    if {"emotion", "pixels", "Usage"} <= set(header):
        return cached_dataset("fer2013-csv", params, [csv_path],
                              lambda: _load_pixels_csv(csv_path, header, wanted, grayscale, size),
                              use_cache=use_cache)
    if {"Usage", "Image name", "emotion"} <= set(header):
        rows = _read_emotion_csv(csv_path, header, wanted, drop_ambiguous)
        files = [f for f, _, _ in rows]
        # a packed split stands for its PNGs: the cache must follow the pack file
        files += sorted({f.parent / "pack.npz" for f in files if (f.parent / "pack.json").is_file()})
        build = lambda: _build_from_pngs(csv_path, rows, wanted, drop_ambiguous, grayscale, size)  # noqa: E731
        return cached_dataset("fer2013-png", params, [csv_path, *files], build, use_cache=use_cache)
    raise DataError(csv_path, f"unrecognised header {header}", line=1,
                    hint="expected 'emotion,pixels,Usage' or 'row,Usage,Image name,emotion,ambiguous'")


def _label(value: str, csv_path: Path, lineno: int) -> int:
    try:
        label = int(value)
    except ValueError:
        raise DataError(csv_path, f"emotion {value!r} is not an integer", line=lineno) from None
    if not 0 <= label < len(FER2013_CLASSES):
        raise DataError(csv_path, f"emotion {label} outside 0..6", line=lineno)
    return label


def _usage_of(row: dict[str, str], csv_path: Path, lineno: int) -> str:
    u = (row.get("Usage") or "").strip()
    if u not in USAGES:
        raise DataError(csv_path, f"Usage {u!r} is not one of {', '.join(USAGES)}", line=lineno)
    return u


def _wanted_rows(csv_path: Path, header: list[str],
                 wanted: Optional[set[str]]) -> Iterator[tuple[int, dict[str, str], str, int]]:
    """(line number, row, usage, label) of every csv row in the wanted usages.

    Both csv forms share these checks (complete row, known Usage, emotion 0..6), so a broken line
    gets the same ``DataError`` naming its line whichever form it is in; rows of other usages are
    skipped before their label is read.
    """
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh, fieldnames=header)
        next(reader)
        for lineno, row in enumerate(reader, start=2):
            if None in row or any(row.get(k) is None for k in header):
                raise DataError(csv_path, f"expected {len(header)} fields", line=lineno)
            u = _usage_of(row, csv_path, lineno)
            if wanted is not None and u not in wanted:
                continue
            yield lineno, row, u, _label(row["emotion"], csv_path, lineno)


def _load_pixels_csv(csv_path: Path, header: list[str], wanted: Optional[set[str]], grayscale: bool,
                     size: Optional[int]) -> FaceDataset:
    images: list[np.ndarray] = []
    labels: list[int] = []
    paths: list[str] = []
    for lineno, row, _, label in _wanted_rows(csv_path, header, wanted):
        pix = np.array(row["pixels"].split(), dtype=np.int64) if row["pixels"].strip() else np.zeros(0, np.int64)
        if pix.size != 48 * 48 or pix.min() < 0 or pix.max() > 255:
            raise DataError(csv_path, f"pixels must be 2304 values in 0..255, got {pix.size}", line=lineno)
        images.append(pix.astype(np.uint8).reshape(48, 48))
        labels.append(label)
        paths.append(f"{csv_path}:{lineno}")
    import cv2

    def convert(img: np.ndarray) -> np.ndarray:
        if size is not None and size != 48:
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR if size > 48 else cv2.INTER_AREA)
        return img[None] if grayscale else np.repeat(img[None], 3, axis=0)

    s = size or 48
    stack = np.stack([convert(i) for i in images]) if images else np.zeros((0, 1 if grayscale else 3, s, s), np.uint8)
    return FaceDataset(images=torch.from_numpy(stack), labels=torch.tensor(labels, dtype=torch.int64),
                       classes=list(FER2013_CLASSES), paths=paths,
                       meta={"dataset": "fer2013", "source": "fer2013.csv",
                             "usage": sorted(wanted) if wanted else None})


def _read_emotion_csv(csv_path: Path, header: list[str], wanted: Optional[set[str]],
                      drop_ambiguous: bool) -> list[tuple[Path, int, int]]:
    rows: list[tuple[Path, int, int]] = []
    for lineno, row, u, label in _wanted_rows(csv_path, header, wanted):
        amb = (row.get("ambiguous") or "0").strip()
        if amb not in {"0", "1"}:
            raise DataError(csv_path, f"ambiguous must be 0 or 1, got {amb!r}", line=lineno)
        if drop_ambiguous and amb == "1":
            continue
        name = row["Image name"].strip()
        if not name:
            raise DataError(csv_path, "empty image name", line=lineno)
        rows.append((csv_path.parent / USAGE_FOLDERS[u] / name, label, lineno))
    return rows


def _build_from_pngs(csv_path: Path, rows: list[tuple[Path, int, int]], wanted: Optional[set[str]],
                     drop_ambiguous: bool, grayscale: bool, size: Optional[int]) -> FaceDataset:
    from ferkit.data.pack import images_by_name, is_pack

    packed = {f.parent for f, _, _ in rows if is_pack(f.parent)}
    for f, _, lineno in rows:
        if f.parent not in packed and not f.is_file():
            raise DataError(f, f"image named on line {lineno} of {csv_path} is missing",
                            hint="restore it, or restrict usage= to the splits you have")
    if packed:  # FER+ splits packed for the GPU machine: the csv names images inside the packs
        from ferkit.data.prepared import convert_images

        images = None
        for folder in packed:
            at = [i for i, (f, _, _) in enumerate(rows) if f.parent == folder]
            part = images_by_name(folder, [rows[i][0].name for i in at])
            if images is None:
                images = torch.zeros((len(rows), *part.shape[1:]), dtype=torch.uint8)
            images[torch.as_tensor(at)] = part
        others = [i for i, (f, _, _) in enumerate(rows) if f.parent not in packed]
        if others:
            images[torch.as_tensor(others)] = read_images([rows[i][0] for i in others], grayscale=True)
        images = convert_images(FaceDataset(images=images, labels=torch.zeros(len(rows), dtype=torch.int64),
                                            classes=list(FER2013_CLASSES)), size, grayscale).images
    else:
        images = read_images([f for f, _, _ in rows], grayscale=grayscale, size=size)
    return FaceDataset(images=images, labels=torch.tensor([l for _, l, _ in rows], dtype=torch.int64),
                       classes=list(FER2013_CLASSES), paths=[str(f) for f, _, _ in rows],
                       meta={"dataset": "fer2013", "source": "fer2013_emotion.csv+png",
                             "usage": sorted(wanted) if wanted else None, "drop_ambiguous": drop_ambiguous})


def index_fer2013(path: Union[str, Path], usage: Union[None, str, Iterable[str]] = "Training",
                  drop_ambiguous: bool = True):
    """File index of the ``fer2013_emotion.csv`` + PNG form (the pixel csv has no files to index)."""
    from ferkit.data.index import DatasetIndex, Sample

    csv_path = find_csv(Path(path))
    wanted = _usages(usage)
    with open(csv_path, newline="") as fh:
        header = [h.strip() for h in next(csv.reader(fh), [])]
    if not {"Usage", "Image name", "emotion"} <= set(header):
        raise DataError(csv_path, "only the fer2013_emotion.csv + PNG form can be indexed; fer2013.csv "
                                  "holds its pixels inline and its faces are already cropped", line=1,
                        hint="load it with load_fer2013 instead")
    rows = _read_emotion_csv(csv_path, header, wanted, drop_ambiguous)
    return DatasetIndex("fer2013", list(FER2013_CLASSES), [Sample(f, l) for f, l, _ in rows],
                        meta={"usage": sorted(wanted) if wanted else None, "drop_ambiguous": drop_ambiguous},
                        cropped=True)
