"""The in-memory dataset every reader returns and every recipe trains on.

Face datasets used by the papers are small enough (FER+ train: 28k x 48x48 = 66 MB) to live as one
uint8 tensor; keeping them as tensors (not file lists) means an epoch is a few indexing ops, the
whole set can sit on the training device, and caches are a single ``torch.save``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional, Sequence, Union

import torch


@dataclass
class FaceDataset:
    """Decoded face images with labels.

    ``images``: uint8 ``[N, C, H, W]`` (C = 1 gray or 3 RGB); ``labels``: int64 ``[N]`` indexing
    ``classes``; ``subjects``: int64 ``[N]`` person ids (indices into ``subject_names`` when given),
    or None when the dataset has no identities; ``soft_labels``: float32 ``[N, K]`` label
    distributions (FER+ votes) or None; ``paths``: the source file (or ``csv:line``) of every image.
    ``meta`` records how the set was read (dataset name, vote rule, usage...), so a caller can
    always say which protocol produced the numbers it reports.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    subjects: Optional[torch.Tensor] = None
    soft_labels: Optional[torch.Tensor] = None
    paths: list[str] = field(default_factory=list)
    subject_names: Optional[list[str]] = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = int(self.images.shape[0])
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [N,C,H,W], got {self.images.dtype} {tuple(self.images.shape)}")
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64)
        if self.labels.shape != (n,):
            raise ValueError(f"labels must be [N={n}], got {tuple(self.labels.shape)}")
        if self.subjects is not None:
            self.subjects = torch.as_tensor(self.subjects, dtype=torch.int64)
            if self.subjects.shape != (n,):
                raise ValueError(f"subjects must be [N={n}], got {tuple(self.subjects.shape)}")
        if self.soft_labels is not None:
            self.soft_labels = torch.as_tensor(self.soft_labels, dtype=torch.float32)
            if self.soft_labels.shape != (n, len(self.classes)):
                raise ValueError(f"soft_labels must be [N={n}, K={len(self.classes)}], "
                                 f"got {tuple(self.soft_labels.shape)}")
        if self.paths and len(self.paths) != n:
            raise ValueError(f"paths has {len(self.paths)} entries for {n} images")
        if n and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)):
            raise ValueError(f"labels outside 0..{len(self.classes) - 1}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, idx: Union[Sequence[int], torch.Tensor]) -> "FaceDataset":
        """The rows ``idx`` (indices or a boolean mask), same classes / subject names / meta."""
        index = torch.as_tensor(idx)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        index = index.to(torch.int64)
        rows = index.tolist()
        return replace(
            self,
            images=self.images[index],
            labels=self.labels[index],
            subjects=None if self.subjects is None else self.subjects[index],
            soft_labels=None if self.soft_labels is None else self.soft_labels[index],
            paths=[self.paths[i] for i in rows] if self.paths else [],
            meta=dict(self.meta),
        )

    def class_counts(self) -> dict[str, int]:
        counts = torch.bincount(self.labels, minlength=len(self.classes)).tolist()
        return dict(zip(self.classes, counts))

    def num_subjects(self) -> int:
        return 0 if self.subjects is None else int(torch.unique(self.subjects).numel())

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of tensors/lists (what caches and prepared folders store)."""
        return {
            "images": self.images, "labels": self.labels, "classes": list(self.classes),
            "subjects": self.subjects, "soft_labels": self.soft_labels, "paths": list(self.paths),
            "subject_names": self.subject_names, "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FaceDataset":
        return cls(images=d["images"], labels=d["labels"], classes=list(d["classes"]),
                   subjects=d.get("subjects"), soft_labels=d.get("soft_labels"),
                   paths=list(d.get("paths") or []), subject_names=d.get("subject_names"),
                   meta=dict(d.get("meta") or {}))

    def __repr__(self) -> str:
        subj = f", subjects={self.num_subjects()}" if self.subjects is not None else ""
        return (f"FaceDataset(n={len(self)}, shape={self.image_shape}, classes={self.classes}{subj}, "
                f"meta={self.meta})")


def concat(datasets: Sequence[FaceDataset]) -> FaceDataset:
    """Stack datasets with the same classes and image shape (e.g. several prepared chunks)."""
    if not datasets:
        raise ValueError("nothing to concatenate")
    first = datasets[0]
    for d in datasets[1:]:
        if d.classes != first.classes or d.image_shape != first.image_shape:
            raise ValueError("datasets differ in classes or image shape")
    def cat_opt(name: str) -> Optional[torch.Tensor]:
        parts = [getattr(d, name) for d in datasets]
        return None if any(p is None for p in parts) else torch.cat(parts)
    names = first.subject_names
    if any(d.subject_names != names for d in datasets):
        names = None
    return FaceDataset(
        images=torch.cat([d.images for d in datasets]), labels=torch.cat([d.labels for d in datasets]),
        classes=list(first.classes), subjects=cat_opt("subjects"), soft_labels=cat_opt("soft_labels"),
        paths=[p for d in datasets for p in d.paths] if all(d.paths for d in datasets) else [],
        subject_names=names, meta=dict(first.meta))
