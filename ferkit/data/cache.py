"""A cache of decoded datasets, so epochs and reruns never decode the same files twice.

Decoding FER+ train (28k PNGs) costs seconds every run; a ``torch.save`` of the uint8 tensor loads
in a fraction of that. The key hashes everything the result depends on: the reader name and its
parameters (vote rule, size, gray/RGB...), and the absolute path, size and mtime of every source
file (label files and images). Editing, adding or removing a file therefore gives a new key, and a
stale cache can never be read. Files are written atomically (temp file + rename), so a killed run
leaves no half-written cache.

Location: ``$FERKIT_CACHE`` if set; else ``cache/`` in the source checkout (ignored by git);
else ``~/.cache/ferkit``. ``FERKIT_CACHE=off`` disables caching.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch

from ferkit.data.dataset import FaceDataset
from ferkit.utils.io import atomic_torch_save

#: bump when the stored format or any reader's output changes, to invalidate old caches
CACHE_VERSION = 1


def cache_dir() -> Optional[Path]:
    """Where caches go, or None when caching is switched off."""
    env = os.environ.get("FERKIT_CACHE")
    if env:
        return None if env.lower() in {"off", "0", "none", "false"} else Path(env)
    root = Path(__file__).resolve().parent.parent.parent
    if (root / "pyproject.toml").is_file() and os.access(root, os.W_OK):
        return root / "cache"
    return Path.home() / ".cache" / "ferkit"


def fingerprint(files: Iterable[Path]) -> str:
    """Hash of (absolute path, size, mtime_ns) of every file; missing files hash as missing."""
    h = hashlib.sha256()
    for f in files:
        p = Path(f).absolute()
        try:
            st = p.stat()
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()


def cache_key(kind: str, params: dict[str, Any], files: Iterable[Path]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"v": CACHE_VERSION, "kind": kind, "params": params}, sort_keys=True, default=str).encode())
    h.update(fingerprint(files).encode())
    return h.hexdigest()[:24]


def cache_path(kind: str, key: str) -> Optional[Path]:
    folder = cache_dir()
    return None if folder is None else folder / f"{kind.replace('/', '_')}-{key}.pt"


def cached_dataset(kind: str, params: dict[str, Any], files: Iterable[Path],
                   build: Callable[[], FaceDataset], use_cache: bool = True) -> FaceDataset:
    """``build()`` once; later calls with the same params and unchanged files load the tensors.

    ``files`` must list every file the result depends on (so changes invalidate the entry). A
    corrupt cache file is ignored and rebuilt, never trusted.
    """
    if not use_cache:
        return build()
    path = cache_path(kind, cache_key(kind, params, files))
    if path is None:
        return build()
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            dataset = FaceDataset.from_dict(blob)
            dataset.meta["cache"] = str(path)
            return dataset
        except Exception:
            path.unlink(missing_ok=True)
    dataset = build()
    try:
        atomic_torch_save(dataset.to_dict(), path)
    except OSError:
        pass  # a read-only cache folder must not stop a run; it only costs decode time
    return dataset
