"""Compact, lossless packs of training data, for machines that get only the checkout (the GPU one).

Why: the GPU machine this project borrows receives the working tree and nothing else (64 MiB in
all) and cannot decode JPEG folders or run face detection (no mediapipe there). A pack holds a
dataset as the loaders would return it -- uint8 faces already cropped and aligned, labels, votes,
subjects -- in a fraction of the size, and the loaders read it like the original folder: a pack
folder stands where the dataset folder stood (``ferplus/FER2013Train``, ``ckplus48``,
``identity/celeba_subset``), so ``--data`` of every recipe points at a pack unchanged.

On-disk format of a pack folder (version 1)
    ``pack.json``: ``{"format": "ferkit-pack", "version": 1, "kind", "n", "shape": [C, H, W],
    "classes", "subject_names", "names", "meta", "tile"}`` and ``pack.npz`` with ``blob`` (uint8,
    the concatenated WebP files), ``offsets`` (int64, start of each WebP in ``blob`` plus the end)
    and the per-image arrays (``labels``, ``subjects``, ``votes``...). Images are stored as
    lossless WebP mosaics of ``tile x tile`` faces (about 0.70x the raw bytes on FER+, against
    0.95x for zlib), decoded back to exactly the same uint8 pixels.

Kinds: ``ferplus`` (every ``label.csv`` row: ``names`` + ``votes``; any vote rule is applied at
load time, as from the csv), ``faces`` (a labelled face set: CK+48, identity folders; ``labels``,
``subjects``). FER2013's 7-class labels travel as the original ``fer2013_emotion.csv`` beside
the FER+ packs, whose images it names.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

import cv2
import numpy as np
import torch

from ferkit.data.dataset import FaceDataset
from ferkit.data.errors import DataError
from ferkit.utils.io import atomic_write_text

FORMAT = "ferkit-pack"
VERSION = 1
#: faces per mosaic side: 32 x 32 faces of 48 px is a 1536 px WebP (big mosaics compress better)
TILE = 32

PathLike = Union[str, Path]


def is_pack(folder: PathLike) -> bool:
    return (Path(folder) / "pack.json").is_file()


# ---- images <-> WebP mosaics ------------------------------------------------------------------------
def encode_images(images: np.ndarray, tile: int = TILE) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``[N, C, H, W]`` (C 1 or 3) -> (``blob``, ``offsets``) of lossless WebP mosaics."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 [N, 1|3, H, W] images, got {images.dtype} {images.shape}")
    n, c, h, w = images.shape
    per = tile * tile
    parts, offsets = [], [0]
    for start in range(0, n, per):
        chunk = images[start:start + per]
        if len(chunk) < per:
            chunk = np.concatenate([chunk, np.zeros((per - len(chunk), c, h, w), np.uint8)])
        mosaic = chunk.reshape(tile, tile, c, h, w).transpose(0, 3, 1, 4, 2).reshape(tile * h, tile * w, c)
        if c == 3:
            mosaic = mosaic[..., ::-1]  # OpenCV writes BGR
        ok, buf = cv2.imencode(".webp", np.ascontiguousarray(mosaic), [cv2.IMWRITE_WEBP_QUALITY, 101])
        if not ok:
            raise RuntimeError(f"OpenCV could not encode a {mosaic.shape[1]}x{mosaic.shape[0]} WebP mosaic "
                               "(WebP allows at most 16383 px a side: pack smaller faces or a smaller tile)")
        parts.append(buf.ravel())
        offsets.append(offsets[-1] + buf.size)
    blob = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
    return blob, np.asarray(offsets, dtype=np.int64)


def decode_images(blob: np.ndarray, offsets: np.ndarray, n: int, shape: tuple[int, int, int],
                  tile: int = TILE) -> np.ndarray:
    """The inverse of :func:`encode_images`: uint8 ``[n, C, H, W]``."""
    c, h, w = shape
    out = np.empty((n, c, h, w), np.uint8)
    per = tile * tile
    for k in range(len(offsets) - 1):
        mosaic = cv2.imdecode(blob[offsets[k]:offsets[k + 1]], cv2.IMREAD_COLOR)
        if mosaic is None:
            raise DataError(Path("pack.npz"), f"WebP mosaic {k} cannot be decoded (the pack is damaged)")
        # WebP is always colour: a gray mosaic comes back with three equal channels
        mosaic = mosaic[..., :1] if c == 1 else mosaic[..., ::-1]
        tiles = mosaic.reshape(tile, h, tile, w, c).transpose(0, 2, 4, 1, 3).reshape(per, c, h, w)
        start = k * per
        take = min(per, n - start)
        out[start:start + take] = tiles[:take]
    return out


# ---- writing -----------------------------------------------------------------------------------
def write_pack(folder: PathLike, images: torch.Tensor, kind: str, arrays: dict[str, np.ndarray],
               info: Optional[dict[str, Any]] = None) -> Path:
    """Write ``folder/pack.json`` + ``folder/pack.npz`` (the json last: its presence means complete)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    x = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    blob, offsets = encode_images(x)
    tmp = folder / "pack.tmp.npz"
    np.savez_compressed(tmp, blob=blob, offsets=offsets, **arrays)
    tmp.replace(folder / "pack.npz")
    manifest = {"format": FORMAT, "version": VERSION, "kind": kind, "n": int(x.shape[0]),
                "shape": list(x.shape[1:]), "tile": TILE, **(info or {})}
    atomic_write_text(folder / "pack.json", json.dumps(manifest) + "\n")
    return folder


# ---- reading -----------------------------------------------------------------------------------
def read_manifest(folder: PathLike) -> dict[str, Any]:
    folder = Path(folder)
    try:
        manifest = json.loads((folder / "pack.json").read_text())
    except (OSError, ValueError) as exc:
        raise DataError(folder / "pack.json", f"cannot read the pack manifest ({exc})") from None
    if manifest.get("format") != FORMAT or int(manifest.get("version", 0)) > VERSION:
        raise DataError(folder / "pack.json", f"not a {FORMAT} v{VERSION} manifest",
                        hint="write the pack again with scripts/pack_training_data.py")
    return manifest


def read_pack(folder: PathLike) -> tuple[dict[str, Any], torch.Tensor, dict[str, np.ndarray]]:
    """(manifest, uint8 images ``[N, C, H, W]``, per-image arrays) of a pack folder."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    try:
        with np.load(folder / "pack.npz") as z:
            arrays = {k: z[k] for k in z.files}
        images = decode_images(arrays.pop("blob"), arrays.pop("offsets"), int(manifest["n"]),
                               tuple(manifest["shape"]), int(manifest.get("tile", TILE)))
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(folder / "pack.npz", f"the pack is damaged or incomplete ({type(exc).__name__}: {exc})",
                        hint="write the pack again with scripts/pack_training_data.py") from None
    return manifest, torch.from_numpy(images), arrays


def load_faces_pack(folder: PathLike) -> FaceDataset:
    """A ``faces`` pack as the :class:`FaceDataset` its loader returned when it was written."""
    manifest, images, arrays = read_pack(folder)
    if manifest.get("kind") != "faces":
        raise DataError(Path(folder) / "pack.json", f"a {manifest.get('kind')!r} pack, not a face set")
    subjects = arrays.get("subjects")
    return FaceDataset(images=images, labels=torch.from_numpy(arrays["labels"]), classes=list(manifest["classes"]),
                       subjects=None if subjects is None else torch.from_numpy(subjects),
                       subject_names=manifest.get("subject_names"),
                       paths=[str(Path(folder) / n) for n in manifest.get("names") or []],
                       meta={**dict(manifest.get("meta") or {}), "pack": str(folder)})


def ferplus_pack_rows(folder: PathLike) -> tuple[list[tuple[str, np.ndarray, int]], torch.Tensor]:
    """``label.csv``-style rows ``(name, 10 votes, row number)`` and the images of a ``ferplus`` pack."""
    manifest, images, arrays = read_pack(folder)
    if manifest.get("kind") != "ferplus":
        raise DataError(Path(folder) / "pack.json", f"a {manifest.get('kind')!r} pack, not a FER+ split")
    votes = arrays["votes"].astype(np.int64)
    return [(name, votes[i], i + 1) for i, name in enumerate(manifest["names"])], images


def images_by_name(folder: PathLike, names: list[str]) -> torch.Tensor:
    """The images of a ``ferplus`` pack named ``names`` (FER2013's csv names them), in that order."""
    rows, images = ferplus_pack_rows(folder)
    index = {name: i for i, (name, _, _) in enumerate(rows)}
    missing = [n for n in names if n not in index]
    if missing:
        raise DataError(Path(folder) / "pack.json", f"{len(missing)} image(s) named by the csv are not in the pack, "
                                                    f"e.g. {missing[0]}")
    return images[torch.as_tensor([index[n] for n in names], dtype=torch.int64)]
