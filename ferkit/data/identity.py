"""Face-recognition data in the identity-folder layout: ``<root>/<identity>/<image>``.

This is how CASIA-WebFace, VGGFace2, the CelebA identity subset here, and AT&T/ORL
(``s1..s40/1..10.pgm``) are distributed. Labels and subjects are both the identity index
(identities in natural sort order: ``s2`` before ``s10``), so identity training and
subject-aware splits read the same tensor.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ferkit.data.cache import cached_dataset
from ferkit.data.dataset import FaceDataset, concat
from ferkit.data.errors import DataError
from ferkit.data.pack import is_pack
from ferkit.data.images import IMAGE_EXTENSIONS, read_images
from ferkit.errors import UsageError


def natural_key(name: str) -> list[Union[int, str]]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def list_identity_folders(root: Union[str, Path], min_images: int = 1,
                          max_identities: Optional[int] = None) -> list[tuple[str, list[Path]]]:
    """``(identity, sorted image files)`` for every sub-folder holding at least ``min_images`` images.

    For a pack the "files" are the names of its images (``<identity>/<file>``) under ``root``."""
    root = Path(root)
    if is_pack(root):
        ds = _identity_pack(root, None, None, min_images, max_identities)
        groups: dict[int, list[Path]] = {}
        for label, path in zip(ds.labels.tolist(), ds.paths):
            groups.setdefault(label, []).append(Path(path))
        return [(ds.classes[k], files) for k, files in sorted(groups.items())]
    if not root.is_dir():
        raise DataError(root, "identity root folder is missing",
                        hint="expected <root>/<identity>/<image files>")
    out: list[tuple[str, list[Path]]] = []
    for sub in sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                      key=lambda p: natural_key(p.name)):
        files = sorted((f for f in sub.iterdir() if f.is_file() and not f.name.startswith(".")
                        and f.suffix.lower() in IMAGE_EXTENSIONS), key=lambda f: natural_key(f.name))
        if len(files) >= min_images:
            out.append((sub.name, files))
        if max_identities is not None and len(out) >= max_identities:
            break
    if not out:
        raise DataError(root, f"no identity folders with at least {min_images} image(s)",
                        hint="expected <root>/<identity>/<image files> (e.g. CASIA-WebFace, ORL s1/1.pgm)")
    return out


def load_identity_folders(root: Union[str, Path], size: int = 48, grayscale: bool = True,
                          min_images: int = 1, max_identities: Optional[int] = None,
                          use_cache: bool = True) -> FaceDataset:
    """Every image of every identity folder, resized to ``size x size`` (gray or RGB).

    ``labels == subjects`` = identity index; ``classes`` = ``subject_names`` = folder names.
    ``min_images`` drops identities with fewer images (verification needs >= 2 per identity).
    """
    from ferkit.data.prepared import is_prepared, load_prepared

    root = Path(root)
    if is_prepared(root):  # the output of `ferkit prepare identity ...`
        return load_prepared(root, size=size, grayscale=grayscale)
    if is_pack(root):  # scripts/pack_training_data.py (the GPU machine's copy)
        return _identity_pack(root, size, grayscale, min_images, max_identities)
    groups = list_identity_folders(root, min_images=min_images, max_identities=max_identities)
    files = [f for _, fs in groups for f in fs]
    names = [name for name, _ in groups]

    def build() -> FaceDataset:
        labels = torch.tensor([i for i, (_, fs) in enumerate(groups) for _ in fs], dtype=torch.int64)
        return FaceDataset(images=read_images(files, grayscale=grayscale, size=size), labels=labels,
                           classes=list(names), subjects=labels.clone(), paths=[str(f) for f in files],
                           subject_names=list(names),
                           meta={"dataset": "identity-folders", "root": str(root), "size": size,
                                 "grayscale": grayscale})

    params = {"root": str(root.resolve()), "size": size, "grayscale": grayscale, "min_images": min_images,
              "max_identities": max_identities}
    return cached_dataset("identity", params, files, build, use_cache=use_cache)


def _identity_pack(root: Path, size: Optional[int], grayscale: Optional[bool], min_images: int,
                   max_identities: Optional[int]) -> FaceDataset:
    """An identity pack with the loader's filters: identities with >= ``min_images``, the first
    ``max_identities``, labels renumbered in order as the folder reader numbers them."""
    from ferkit.data.pack import load_faces_pack
    from ferkit.data.prepared import convert_images

    ds = load_faces_pack(root)
    counts = torch.bincount(ds.labels, minlength=len(ds.classes))
    keep = [k for k in range(len(ds.classes)) if int(counts[k]) >= min_images]
    if max_identities is not None:
        keep = keep[:max_identities]
    if not keep:
        raise DataError(root, f"no identities with at least {min_images} image(s) in this pack")
    remap = torch.full((len(ds.classes),), -1, dtype=torch.int64)
    remap[keep] = torch.arange(len(keep))
    rows = (remap[ds.labels] >= 0).nonzero().flatten()
    labels = remap[ds.labels[rows]]
    names = [ds.classes[k] for k in keep]
    out = FaceDataset(images=ds.images[rows], labels=labels, classes=names, subjects=labels.clone(),
                      paths=[ds.paths[i] for i in rows.tolist()], subject_names=list(names),
                      meta={**ds.meta, "dataset": "identity-folders", "root": str(root)})
    return convert_images(out, size, grayscale)


def load_orl(root: Union[str, Path], size: int = 48, grayscale: bool = True, use_cache: bool = True) -> FaceDataset:
    """AT&T / ORL faces (``sN/K.pgm``, 40 subjects x 10 images): identity folders with PGMs."""
    root = Path(root)
    if not any(root.glob("s*/*.pgm")):
        raise DataError(root, "no ORL images (expected s1/1.pgm ... s40/10.pgm)")
    ds = load_identity_folders(root, size=size, grayscale=grayscale, use_cache=use_cache)
    ds.meta["dataset"] = "orl"
    return ds


def index_identity_folders(root: Union[str, Path], min_images: int = 1, max_identities: Optional[int] = None,
                           cropped: bool = True):
    """Identity folders as a file index (labels = identity index, subjects = folder names)."""
    from ferkit.data.index import DatasetIndex, Sample

    groups = list_identity_folders(root, min_images=min_images, max_identities=max_identities)
    samples = [Sample(f, i, name) for i, (name, files) in enumerate(groups) for f in files]
    return DatasetIndex("identity", [n for n, _ in groups], samples,
                        meta={"min_images": min_images, "max_identities": max_identities}, cropped=cropped)


# ---- identity training sets (several roots merged, some identities held out) ----------------------
def split_identity_sets(data_dir: Path, sets: str) -> list[Path]:
    """The identity-folder roots named by ``--identity-sets`` (sub-folders of ``data_dir``)."""
    names = [s.strip() for s in (sets or "").split(",") if s.strip()]
    if not names:
        return [data_dir]
    roots = [data_dir / n for n in names]
    for r in roots:
        if not r.is_dir():
            raise DataError(r, "identity set folder is missing",
                            hint=f"--data must hold the sets named by --identity-sets ({sets}); "
                                 "pass --identity-sets '' to use --data itself as one identity-folder root")
    return roots


def parse_holdout(spec: Union[int, str, None], set_names: list[str]) -> dict[str, int]:
    """``--holdout-identities``: ``N`` (the last N identities of the first set) or
    ``set=N,set=N`` (per set, e.g. ``celeba_subset=48,yalefaces=7``) -> {set name: N}."""
    if spec is None or spec == "":
        return {}
    if isinstance(spec, int) or str(spec).strip().lstrip("-").isdigit():
        n = int(spec)
        if n < 0:
            raise UsageError(f"--holdout-identities must be >= 0, got {n}")
        return {set_names[0]: n} if n and set_names else {}
    out: dict[str, int] = {}
    for part in str(spec).split(","):
        name, sep, count = part.strip().partition("=")
        if not sep or not count.strip().isdigit():
            raise UsageError(f"--holdout-identities {spec!r}: use N or set=N,set=N (e.g. celeba_subset=48,yalefaces=7)")
        name = name.strip()
        if name not in set_names:
            raise UsageError(f"--holdout-identities names {name!r}, which is not one of the identity sets "
                             f"({', '.join(set_names)})")
        out[name] = int(count)
    return out


def is_yale_root(root: Union[str, Path]) -> bool:
    """A Yale Face Database A folder: flat ``subjectNN.<condition>`` files, no identity sub-folders."""
    root = Path(root)
    if not root.is_dir():
        return False
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    return any(p.is_file() and p.name.startswith("subject") for p in entries) and not any(p.is_dir() for p in entries)


def load_identity_set(root: Union[str, Path], size: int, grayscale: bool = True) -> FaceDataset:
    """One identity set in any layout the identity recipes take: identity folders (CelebA, ORL,
    CASIA), a ``ferkit prepare`` folder, or Yale A's flat files (identities = subjects)."""
    if is_yale_root(root):
        from ferkit.data.yale import load_yale

        return load_yale(root, size=size, grayscale=grayscale)
    return load_identity_folders(root, size=size, grayscale=grayscale)


def load_identity_training_data(data_dir: Path, sets: str, size: int, holdout: Union[int, str, None]
                                ) -> tuple[FaceDataset, list[str], list[str]]:
    """All identity sets merged (labels renumbered), minus held-out identities.

    ``holdout`` (see :func:`parse_holdout`): an int holds out the last N identities of the first
    set; ``set=N,...`` the last N of each named set (e.g. Yale subjects kept for the
    across-expressions check). Returns (training identities dataset, identity names "set/name",
    held-out names "set/name"). Held-out identities never reach training: they are the unseen
    people of the verification check.
    """
    roots = split_identity_sets(Path(data_dir), sets)
    per_set = parse_holdout(holdout, [r.name for r in roots])
    images, labels, names, held_out = [], [], [], []
    for root in roots:
        ds = load_identity_set(root, size=size, grayscale=True)
        keep_ids = list(range(len(ds.classes)))
        n_hold = per_set.get(root.name, 0)
        if n_hold > 0:
            if n_hold >= len(ds.classes):
                raise DataError(root, f"--holdout-identities {n_hold} leaves no identity of {len(ds.classes)} to train")
            keep_ids = keep_ids[: len(ds.classes) - n_hold]
            held_out += [f"{root.name}/{c}" for c in ds.classes[len(keep_ids):]]
        remap = torch.full((len(ds.classes),), -1, dtype=torch.int64)
        remap[keep_ids] = torch.arange(len(keep_ids)) + len(names)
        mask = remap[ds.labels] >= 0
        images.append(ds.images[mask])
        labels.append(remap[ds.labels[mask]])
        names += [f"{root.name}/{ds.classes[j]}" for j in keep_ids]
    all_labels = torch.cat(labels)
    merged = FaceDataset(images=torch.cat(images), labels=all_labels, classes=names, subjects=all_labels.clone(),
                         meta={"dataset": "identity-folders", "sets": sets, "size": size, "held_out": held_out})
    return merged, names, held_out


def image_holdout_split(labels: torch.Tensor, every: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ``every``-th image of each identity (identities with >= 3 images) -> validation."""
    val = torch.zeros_like(labels, dtype=torch.bool)
    if every and every > 1:
        for c in torch.unique(labels).tolist():
            idx = (labels == c).nonzero().flatten()
            if idx.numel() >= 3:
                val[idx[every - 1::every]] = True
    return (~val).nonzero().flatten(), val.nonzero().flatten()


# ---- identity sets with a random verification hold-out (tfe-jl/deepid-identity) -------------------
@dataclass
class IdentityHoldoutSplit:
    """What :func:`load_identity_holdout_split` gives a recipe."""

    train: FaceDataset
    #: one image of every training identity (identification validation)
    validation: FaceDataset
    #: every image of the held-out identities (None when none are held out)
    verification: Optional[FaceDataset]
    #: sorted names of the held-out identities
    heldout: list[str]
    #: one "<root>: N identities" line per identity root
    sources: list[str]


def load_identity_holdout_split(data_dir: Path, extra_roots: Sequence[Union[str, Path]], size: int, min_images: int,
                                n_holdout: int, seed: int) -> IdentityHoldoutSplit:
    """The identities of ``data_dir`` and of ``extra_roots`` with at least ``min_images`` images,
    merged with disjoint labels (names of extra roots prefixed "<root>/"). ``n_holdout`` identities of
    ``data_dir``, drawn at random with ``seed``, never reach training: they are the strangers the
    identity feature is verified on. Of every other identity one random image is held for
    identification validation (the DeepID paper's CASIA-WebFace protocol)."""
    data_dir = Path(data_dir)
    primary = load_identity_folders(data_dir, size=size, grayscale=True, min_images=min_images)
    if primary.labels.numel() and int(torch.bincount(primary.labels).min()) < min_images:
        # a `ferkit prepare` folder is read whole: apply min_images here
        primary = _identities_with(primary, min_images)
    n_ids = len(primary.classes)
    if not 0 <= n_holdout < n_ids:
        raise UsageError(f"--holdout-identities must be in 0..{n_ids - 1} ({data_dir} has {n_ids} identities)")
    rng = np.random.default_rng(seed)
    held = set(rng.choice(n_ids, size=n_holdout, replace=False).tolist()) if n_holdout else set()
    is_held = torch.tensor([int(s) in held for s in primary.subjects.tolist()])
    parts = [_relabel(primary.subset(~is_held))]
    sources = [f"{data_dir.name}: {n_ids - n_holdout} identities"]
    for extra in extra_roots:
        ds = load_identity_set(extra, size=size, grayscale=True)
        parts.append(_identities_with(ds, min_images, prefix=f"{Path(extra).name}/"))
        sources.append(f"{Path(extra).name}: {len(ds.classes)} identities")
    full = _concat_identities(parts)
    val = _one_image_per_identity(full.labels)
    return IdentityHoldoutSplit(full.subset(~val), full.subset(val), primary.subset(is_held) if n_holdout else None,
                                sorted(primary.classes[i] for i in held), sources)


def _relabel(ds: FaceDataset, prefix: str = "") -> FaceDataset:
    """Identity labels renumbered 0..n-1 over the identities present, names prefixed by their source."""
    present = torch.unique(ds.labels)
    remap = torch.full((int(ds.labels.max()) + 1 if len(ds) else 1,), -1, dtype=torch.int64)
    remap[present] = torch.arange(len(present))
    names = [prefix + ds.classes[i] for i in present.tolist()]
    labels = remap[ds.labels]
    return FaceDataset(images=ds.images, labels=labels, classes=names, subjects=labels.clone(),
                       paths=list(ds.paths), subject_names=names, meta=dict(ds.meta))


def _identities_with(ds: FaceDataset, min_images: int, prefix: str = "") -> FaceDataset:
    """The identities of ``ds`` with at least ``min_images`` images, relabelled (:func:`_relabel`)."""
    keep = (torch.bincount(ds.labels) >= min_images).nonzero().flatten()
    return _relabel(ds.subset(torch.isin(ds.labels, keep)), prefix)


def _concat_identities(parts: list[FaceDataset]) -> FaceDataset:
    """Stack identity sets with disjoint label ranges (so ORL's s1 is not CelebA's first identity)."""
    offset, shifted, names = 0, [], []
    for ds in parts:
        labels = ds.labels + offset
        names.extend(ds.classes)
        shifted.append((ds, labels))
        offset += len(ds.classes)
    merged = [FaceDataset(images=ds.images, labels=labels, classes=list(names), subjects=labels.clone(),
                          paths=list(ds.paths), subject_names=list(names), meta=dict(ds.meta))
              for ds, labels in shifted]
    return concat(merged)


def _one_image_per_identity(labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Mask of one random image of every identity."""
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    first: dict[int, int] = {}
    for i in perm.tolist():
        first.setdefault(int(labels[i]), i)
    mask = torch.zeros(len(labels), dtype=torch.bool)
    mask[list(first.values())] = True
    return mask
