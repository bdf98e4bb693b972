"""LFW (Labeled Faces in the Wild): ``lfw/<name>/<name>_NNNN.jpg`` and its pair lists.

Pair files come in two layouts, told apart by their first line:

* ``pairs.txt`` (the 10-fold View 2 protocol): header ``10<TAB>300`` = folds and pairs per class;
  then per fold 300 matched lines ``name n1 n2`` followed by 300 mismatched lines
  ``name1 n1 name2 n2``.
* ``pairsDevTrain.txt`` / ``pairsDevTest.txt`` (View 1): header ``N`` (one column); then N matched
  and N mismatched lines; read as a single fold.

Image numbers are 1-based and zero-padded to 4 digits in file names. Every referenced image must
exist: a missing one is a DataError naming the pairs file and line.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from ferkit.data.dataset import FaceDataset
from ferkit.data.errors import DataError
from ferkit.data.identity import load_identity_folders


@dataclass(frozen=True)
class Pair:
    first: Path
    second: Path
    same: bool
    fold: int


def lfw_image(images_root: Path, name: str, number: int) -> Path:
    return images_root / name / f"{name}_{number:04d}.jpg"


def find_images_root(root: Union[str, Path]) -> Path:
    root = Path(root)
    for cand in (root / "lfw", root / "lfw-deepfunneled", root / "lfw_funneled", root):
        if cand.is_dir() and any(p.is_dir() for p in cand.iterdir()):
            return cand
    raise DataError(root, "no LFW image folders", hint="expected lfw/<name>/<name>_NNNN.jpg")


def read_pairs(pairs_file: Union[str, Path], images_root: Union[str, Path, None] = None,
               check_files: bool = True) -> list[Pair]:
    """Parse either pairs layout; ``images_root`` defaults to ``lfw/`` beside the pairs file."""
    pairs_file = Path(pairs_file)
    if not pairs_file.is_file():
        raise DataError(pairs_file, "pairs file is missing")
    root = Path(images_root) if images_root else find_images_root(pairs_file.parent)
    lines = [(i, ln.split()) for i, ln in enumerate(pairs_file.read_text().splitlines(), 1) if ln.strip()]
    if not lines:
        raise DataError(pairs_file, "pairs file is empty")
    head_line, head = lines[0]
    try:
        if len(head) == 2:
            folds, per_class = int(head[0]), int(head[1])
        elif len(head) == 1:
            folds, per_class = 1, int(head[0])
        else:
            raise ValueError
    except ValueError:
        raise DataError(pairs_file, f"header {' '.join(head)!r} is not 'folds pairs' or 'pairs'", line=head_line) from None
    body = lines[1:]
    expected = folds * per_class * 2
    if len(body) != expected:
        raise DataError(pairs_file, f"header promises {expected} pair lines, found {len(body)}",
                        line=body[-1][0] if body else head_line)
    pairs: list[Pair] = []
    for k, (lineno, f) in enumerate(body):
        fold, within = divmod(k, 2 * per_class)
        same = within < per_class
        try:
            if same:
                if len(f) != 3:
                    raise ValueError("matched pair lines are 'name n1 n2'")
                a, b = lfw_image(root, f[0], int(f[1])), lfw_image(root, f[0], int(f[2]))
            else:
                if len(f) != 4:
                    raise ValueError("mismatched pair lines are 'name1 n1 name2 n2'")
                a, b = lfw_image(root, f[0], int(f[1])), lfw_image(root, f[2], int(f[3]))
        except ValueError as exc:
            msg = str(exc) if "pair lines" in str(exc) else f"image numbers must be integers: {' '.join(f)!r}"
            raise DataError(pairs_file, msg, line=lineno) from None
        if check_files:
            for p in (a, b):
                if not p.is_file():
                    raise DataError(pairs_file, f"pair names a missing image {p}", line=lineno)
        pairs.append(Pair(a, b, same, fold))
    return pairs


def load_lfw(root: Union[str, Path], size: int = 48, grayscale: bool = True, min_images: int = 1,
             use_cache: bool = True) -> FaceDataset:
    """All LFW images as identity folders (labels = subjects = person); faces are centred in the
    250x250 frames, so this resizes the whole frame. ``ferkit prepare lfw`` aligns them instead."""
    ds = load_identity_folders(find_images_root(root), size=size, grayscale=grayscale, min_images=min_images,
                               use_cache=use_cache)
    ds.meta["dataset"] = "lfw"
    return ds


def default_pairs_file(root: Union[str, Path]) -> Optional[Path]:
    root = Path(root)
    for name in ("pairs.txt", "pairsDevTest.txt"):
        for cand in (root / name, root.parent / name):
            if cand.is_file():
                return cand
    return None
