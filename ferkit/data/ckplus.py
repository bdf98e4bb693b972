"""CK+ (Extended Cohn-Kanade) in the common ``CK+48`` layout: ``CK+48/<class>/S###_###_########.png``.

The files are the last three frames of the 327 labelled sequences (981 48x48 gray images, 118
subjects, 7 classes). File names are ``S<subject>_<sequence>_<frame>``; the subject is what the
papers' subject-independent folds split on. (The official layout reader lives in
:mod:`ferkit.data.ckplus_official`.)
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Union

import torch

from ferkit.data.cache import cached_dataset
from ferkit.data.dataset import FaceDataset
from ferkit.data.errors import DataError
from ferkit.data.images import IMAGE_EXTENSIONS, read_images

CKPLUS48_CLASSES = ["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"]
_NAME = re.compile(r"^(S\d+)_(\d+)_(\d+)$")


def is_ckplus48_name(file: Path) -> bool:
    """A CK+48 crop's file name: ``S<subject>_<sequence>_<frame>`` with an image suffix."""
    return file.suffix.lower() in IMAGE_EXTENSIONS and bool(_NAME.match(file.stem))


def _find_root(root: Path) -> Path:
    if (root / "CK+48").is_dir():
        return root / "CK+48"
    return root


def load_ckplus48(root: Union[str, Path], size: Optional[int] = None, grayscale: bool = True,
                  use_cache: bool = True) -> FaceDataset:
    """CK+48 as a :class:`FaceDataset`: classes = the class folders (sorted), subjects from ``S###``.

    ``root`` may be the ``CK+48`` folder or its parent. A file whose name is not
    ``S###_###_########`` is an error (it would get no subject, breaking subject-independent folds).
    """
    from ferkit.data.prepared import convert_images, is_prepared, load_prepared

    if is_prepared(root):  # the output of `ferkit prepare ckplus48 ...`
        return load_prepared(root, size=size, grayscale=grayscale)
    from ferkit.data.pack import is_pack, load_faces_pack

    if is_pack(root):  # scripts/pack_training_data.py (the GPU machine's copy)
        return convert_images(load_faces_pack(root), size, grayscale)
    root, classes, entries = _scan(root)
    subject_names = sorted({s for _, _, s, _ in entries})
    index = {s: i for i, s in enumerate(subject_names)}
    files = [f for f, _, _, _ in entries]

    def build() -> FaceDataset:
        return FaceDataset(images=read_images(files, grayscale=grayscale, size=size),
                           labels=torch.tensor([c for _, c, _, _ in entries], dtype=torch.int64),
                           classes=classes, subjects=torch.tensor([index[s] for _, _, s, _ in entries]),
                           paths=[str(f) for f in files], subject_names=subject_names,
                           meta={"dataset": "ckplus48", "protocol": "last3", "root": str(root)})

    params = {"root": str(root.resolve()), "size": size, "grayscale": grayscale}
    return cached_dataset("ckplus48", params, files, build, use_cache=use_cache)


def _scan(root: Union[str, Path]) -> tuple[Path, list[str], list[tuple[Path, int, str, str]]]:
    root = _find_root(Path(root))
    if not root.is_dir():
        raise DataError(root, "CK+48 folder is missing", hint="expected CK+48/<class>/S###_###_########.png")
    if (root / "label.csv").is_file() or any((root / c).is_dir() for c in ("FER2013Train", "FER2013Valid")):
        raise DataError(root, "this is a FER+ folder, but this needs CK+48",
                        hint="pass the CK+48 folder (CK+48/<class>/S###_###_########.png), or use a FER+ recipe "
                             "(`ferkit train --help` lists them) for FER+")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(root, "no class folders", hint="expected CK+48/<class>/S###_###_########.png")
    entries: list[tuple[Path, int, str, str]] = []
    for ci, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if f.name.startswith(".") or not f.is_file():
                continue
            if f.suffix.lower() not in IMAGE_EXTENSIONS:
                raise DataError(f, "not an image file in a CK+48 class folder")
            m = _NAME.match(f.stem)
            if not m:
                raise DataError(f, "file name is not S<subject>_<sequence>_<frame>",
                                hint="CK+48 names look like S010_004_00000017.png")
            entries.append((f, ci, m.group(1), m.group(2)))
    if not entries:
        raise DataError(root, "no images in the class folders")
    return root, classes, entries


def index_ckplus48(root: Union[str, Path]):
    """CK+48 as a file index (for ``ferkit prepare``)."""
    from ferkit.data.index import DatasetIndex, Sample

    root, classes, entries = _scan(root)
    return DatasetIndex("ckplus48", classes, [Sample(f, c, s) for f, c, s, _ in entries],
                        meta={"protocol": "last3"}, cropped=True)
