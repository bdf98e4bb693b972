"""Decode image files (PNG/JPEG/PGM/BMP via OpenCV, GIF via Pillow) into uint8 arrays.

:func:`read_image` is ferkit's one image reader: ``ferkit predict``, the app, the dataset readers,
calibration and the bench all decode through it, so a file reads the same everywhere and fails
with the same words. OpenCV cannot read GIF (Yale Face Database A is distributed as GIFs without
a file extension), so Pillow (installed with matplotlib) is the fallback. Every failure is an
:class:`ImageReadError` (a :class:`DataError`) naming the file, because a silently skipped image
would change a paper's protocol counts.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np
import torch

from ferkit.data.errors import DataError

PathLike = Union[str, Path]

#: file endings the folder readers treat as images
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
#: video containers ``ferkit predict`` and the app read frame by frame (here, beside the picture
#: suffixes, so a reader can tell a user who passed a video where a picture belongs)
VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}


#: what a dataset reader adds to an unreadable file's error: the file came with the dataset
DATASET_FILE_HINT = "restore or re-extract the dataset, or remove the file from its label list"


class ImageReadError(DataError):
    """A file that is missing, a folder, empty, or not an image (the message names the file).

    A :class:`DataError`, so a dataset reader's callers catch it with the rest of a bad dataset;
    like every DataError a :class:`~ferkit.errors.UserError` (the user picked the file or the
    folder) and still a ``ValueError`` for older callers.
    """


def expand_image_paths(paths: Sequence[Union[str, Path]]) -> list[Path]:
    """Files as given; folders replaced by their image files (recursively, sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise ImageReadError(p, f"folder holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            out.extend(found)
        else:
            out.append(p)
    return out


def _read_with_pil(path: Path, grayscale: bool) -> Optional[np.ndarray]:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow ships with matplotlib
        return None
    try:
        with Image.open(path) as im:
            im.seek(0)
            return np.array(im.convert("L" if grayscale else "RGB"))
    except Exception:  # noqa: BLE001 - any decoder failure means the same to the caller: not an image
        return None


def read_image(path: PathLike, grayscale: bool = False, hint: str = "") -> np.ndarray:
    """RGB uint8 ``[H, W, 3]``, or gray ``[H, W]`` with ``grayscale``, from any common image file.

    OpenCV decodes (EXIF orientation applied; gray, 16-bit and RGBA files converted; the bytes are
    read by numpy, so non-ASCII paths work too); GIF, which OpenCV cannot read, goes through Pillow.
    Raises :class:`ImageReadError` naming the file when it is missing, a folder, empty, unreadable
    or not an image; ``hint`` says what to do about it (dataset readers pass :data:`DATASET_FILE_HINT`).
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "no such file", hint=hint)
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image", hint=hint)
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise ImageReadError(path, f"cannot be read ({exc.strerror or exc})", hint=hint) from None
    image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        image = _read_with_pil(path, grayscale)
    elif not grayscale:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image is None:
        problem = ("empty file" if data.size == 0 else
                   "is a video, not a picture (ferkit predict reads videos)" if path.suffix.lower() in VIDEO_SUFFIXES
                   else "not an image, or an unsupported / corrupt image format")
        raise ImageReadError(path, problem, hint=hint)
    return image


def resize_square(image: np.ndarray, size: Optional[int]) -> np.ndarray:
    """Resize to ``size x size`` (area interpolation when shrinking); ``None`` keeps the size."""
    if size is None or (image.shape[0] == size and image.shape[1] == size):
        return image
    shrink = image.shape[0] > size or image.shape[1] > size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def to_chw(image: np.ndarray) -> np.ndarray:
    return image[None] if image.ndim == 2 else np.ascontiguousarray(image.transpose(2, 0, 1))


def read_images(paths: Sequence[PathLike], grayscale: bool, size: Optional[int] = None,
                workers: int = 2) -> torch.Tensor:
    """Decode many files into one uint8 ``[N, C, H, W]`` tensor (threads: OpenCV releases the GIL).

    With ``size=None`` all images must already share one size (e.g. FER+ 48x48 PNGs); a file of a
    different size is reported, since silently resizing would hide a wrong folder.
    """
    def load(p: PathLike) -> np.ndarray:
        return to_chw(resize_square(read_image(p, grayscale, hint=DATASET_FILE_HINT), size))

    if not paths:
        c = 1 if grayscale else 3
        return torch.zeros((0, c, size or 0, size or 0), dtype=torch.uint8)
    first = load(paths[0])
    out = np.empty((len(paths),) + first.shape, dtype=np.uint8)
    out[0] = first

    def fill(i: int) -> None:
        arr = load(paths[i])
        if arr.shape != first.shape:
            raise DataError(paths[i], f"image is {arr.shape[2]}x{arr.shape[1]}, expected "
                                      f"{first.shape[2]}x{first.shape[1]} like {paths[0]}",
                            hint="pass size=... to resize")
        out[i] = arr

    if workers > 1 and len(paths) > 64:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(fill, range(1, len(paths)), chunksize=256))
    else:
        for i in range(1, len(paths)):
            fill(i)
    return torch.from_numpy(out)
