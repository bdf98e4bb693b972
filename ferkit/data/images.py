"""Decode image files (PNG/JPEG/PGM/BMP via OpenCV, GIF via Pillow) into uint8 arrays.

OpenCV cannot read GIF (Yale Face Database A is distributed as GIFs without a file extension),
so Pillow (installed with matplotlib) is the fallback. Every failure is a :class:`DataError`
naming the file, because a silently skipped image would change a paper's protocol counts.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np
import torch

from ferkit.data.errors import DataError
from ferkit.errors import UserError

PathLike = Union[str, Path]

#: file endings the folder readers treat as images
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".bmp", ".tif", ".tiff", ".gif", ".webp"}


class ImageReadError(UserError, ValueError):
    """A file that is missing, not an image, or cannot be decoded (message names the file).

    A :class:`~ferkit.errors.UserError` (the user picked the file); still a ``ValueError`` for older callers.
    """


def expand_image_paths(paths: Sequence[Union[str, Path]]) -> list[Path]:
    """Files as given; folders replaced by their image files (recursively, sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise ImageReadError(f"{p}: folder holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
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
            return np.asarray(im.convert("L" if grayscale else "RGB"))
    except Exception:
        return None


def read_image(path: PathLike, grayscale: bool) -> np.ndarray:
    """``[H, W]`` uint8 (gray) or ``[H, W, 3]`` uint8 RGB; DataError if missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file is missing", hint="restore the file or remove it from the label list")
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR)
    if image is None:
        image = _read_with_pil(path, grayscale)
        if image is None:
            raise DataError(path, "cannot decode this image (corrupt or unsupported format)",
                            hint="re-extract the dataset archive")
        return image
    if not grayscale:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
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
        return to_chw(resize_square(read_image(p, grayscale), size))

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
