"""Writing packs (:mod:`ferkit.data.pack`) from the dataset folders: what ``scripts/pack_training_data.py`` runs.

Apart from the pack format because it reads the datasets with their own loaders (CK+48, FER+,
identity folders), while those loaders read packs: one module doing both was an import circle.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ferkit.data.dataset import FaceDataset
from ferkit.data.pack import PathLike, write_pack
from ferkit.errors import UsageError


def pack_dataset(folder: PathLike, ds: FaceDataset) -> Path:
    """A labelled face set (CK+48, identity folders) as a ``faces`` pack."""
    arrays = {"labels": ds.labels.numpy().astype(np.int64)}
    if ds.subjects is not None:
        arrays["subjects"] = ds.subjects.numpy().astype(np.int64)
    return write_pack(folder, ds.images, "faces", arrays,
                      {"classes": list(ds.classes), "subject_names": ds.subject_names,
                       # <class or identity>/<file>: enough to trace a face back to its source
                       "names": ["/".join(Path(p).parts[-2:]) for p in ds.paths], "meta": _plain(ds.meta)})


def pack_ferplus_split(folder: PathLike, split_dir: PathLike) -> Path:
    """Every row of a FER+ split (``label.csv`` + PNGs) as a ``ferplus`` pack: names, votes, faces."""
    from ferkit.data.ferplus import read_label_csv
    from ferkit.data.images import read_images

    split_dir = Path(split_dir)
    rows = read_label_csv(split_dir / "label.csv")
    images = read_images([split_dir / name for name, _, _ in rows], grayscale=True)
    votes = np.stack([v for _, v, _ in rows]).astype(np.uint8)
    return write_pack(folder, images, "ferplus", {"votes": votes},
                      {"names": [name for name, _, _ in rows], "split": split_dir.name})


def _plain(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool, list)) or v is None}


# ---- whole training sets -------------------------------------------------------------------------
PARTS = ("ferplus", "ckplus48", "identity")
IDENTITY_SETS = ("celeba_subset", "orl_faces")


def folder_bytes(folder: PathLike) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def write_training_packs(src: PathLike, out: PathLike, parts: tuple[str, ...] = PARTS,
                         identity_size: int = 64, log: Any = print) -> dict[str, int]:
    """Pack ``src`` (``../shared/data`` layout) into ``out`` (same layout); bytes written per part.

    ``ferplus``: both FER+ splits (every row, votes kept) and ``fer2013_emotion.csv``;
    ``ckplus48``: the 981 CK+48 faces with classes and subjects; ``identity``: the CelebA subset
    and ORL as ``identity_size`` gray faces (the recipes' inputs are gray; 64 px keeps the pack
    small, and nets with larger inputs are fed an upsampled face, a stated cut).
    """
    import shutil

    from ferkit.data.ckplus import load_ckplus48
    from ferkit.data.identity import load_identity_folders

    src, out = Path(src), Path(out)
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise UsageError(f"unknown pack part(s) {sorted(unknown)}; choose from {', '.join(PARTS)}")
    sizes: dict[str, int] = {}
    if "ferplus" in parts:
        for split in ("FER2013Train", "FER2013Valid"):
            if (src / "ferplus" / split / "label.csv").is_file():
                pack_ferplus_split(out / "ferplus" / split, src / "ferplus" / split)
                log(f"pack: ferplus/{split}")
        csv = src / "ferplus" / "fer2013_emotion.csv"
        if csv.is_file():
            (out / "ferplus").mkdir(parents=True, exist_ok=True)
            shutil.copy2(csv, out / "ferplus" / csv.name)
        sizes["ferplus"] = folder_bytes(out / "ferplus")
    if "ckplus48" in parts:
        pack_dataset(out / "ckplus48", load_ckplus48(src / "ckplus48"))
        sizes["ckplus48"] = folder_bytes(out / "ckplus48")
        log("pack: ckplus48")
    if "identity" in parts:
        for name in IDENTITY_SETS:
            if (src / "identity" / name).is_dir():
                pack_dataset(out / "identity" / name,
                             load_identity_folders(src / "identity" / name, size=identity_size, grayscale=True))
                log(f"pack: identity/{name}")
        sizes["identity"] = folder_bytes(out / "identity")
    return sizes


def write_synthetic_packs(out: PathLike, seed: int = 0) -> dict[str, int]:
    """Tiny random data in the packs' real format and layout, for smoke runs where no data is
    (CI, a fresh clone): every recipe of the GPU campaign can run its steps on it."""
    import csv as csv_module

    from ferkit.data.ferplus import FERPLUS_CLASSES

    rng = np.random.default_rng(seed)
    out = Path(out)
    names_by_split = {}
    for split, n in (("FER2013Train", 96), ("FER2013Valid", 32)):
        images = torch.from_numpy(rng.integers(0, 256, (n, 1, 48, 48), dtype=np.uint8))
        votes = np.zeros((n, 10), np.uint8)
        votes[np.arange(n), rng.integers(0, len(FERPLUS_CLASSES), n)] = 8
        votes[:, 8] = 2
        names = [f"fer{(0 if split == 'FER2013Train' else 100000) + i:07d}.png" for i in range(n)]
        names_by_split[split] = names
        write_pack(out / "ferplus" / split, images, "ferplus", {"votes": votes}, {"names": names, "split": split})
    with open(out / "ferplus" / "fer2013_emotion.csv", "w", newline="") as fh:
        w = csv_module.writer(fh)
        w.writerow(["row", "Usage", "Image name", "emotion", "ambiguous"])
        row = 0
        for split, usage in (("FER2013Train", "Training"), ("FER2013Valid", "PublicTest")):
            for name in names_by_split[split]:
                w.writerow([row, usage, name, int(rng.integers(0, 7)), 0])
                row += 1
    subjects = np.repeat(np.arange(12), 8)
    ck = FaceDataset(images=torch.from_numpy(rng.integers(0, 256, (96, 1, 48, 48), dtype=np.uint8)),
                     labels=torch.from_numpy(rng.integers(0, 7, 96)), subjects=torch.from_numpy(subjects),
                     classes=["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"],
                     subject_names=[f"S{i:03d}" for i in range(12)],
                     paths=[f"synthetic/S{s:03d}_001_{k:08d}.png" for k, s in enumerate(subjects)])
    pack_dataset(out / "ckplus48", ck)
    for name, ids in (("celeba_subset", 64), ("orl_faces", 8)):  # > the recipes' default hold-outs
        labels = np.repeat(np.arange(ids), 4)
        ds = FaceDataset(images=torch.from_numpy(rng.integers(0, 256, (len(labels), 1, 64, 64), dtype=np.uint8)),
                         labels=torch.from_numpy(labels), subjects=torch.from_numpy(labels.copy()),
                         classes=[f"{name[:1]}{i:05d}" for i in range(ids)],
                         subject_names=[f"{name[:1]}{i:05d}" for i in range(ids)],
                         paths=[f"{name[:1]}{l:05d}/{k}.png" for k, l in enumerate(labels)])
        pack_dataset(out / "identity" / name, ds)
    return {p: folder_bytes(out / p) for p in ("ferplus", "ckplus48", "identity")}
