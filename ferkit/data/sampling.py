"""Paired draws from a training set: for each sample, a real face of the same subject with a target label.

FERSNet's training (:mod:`ferkit.recipes.fersnet`) needs, per sample, a target expression z^t and
a real image I^t of the same person showing it (for L_rec and L_idt), or a real face of any
person with z^t (the discriminator's real sample). CK+ subjects show only 2-3 of the 7
expressions, so the draws must say where no such image exists.
"""
from __future__ import annotations

from typing import Optional

import torch

from ferkit.data.errors import DataError


class TargetSampler:
    """Draws, for each sample, a real face of the same subject with the target expression.

    Built once from (subject, label) of the training set: indices are sorted by (subject, label)
    and a table [S, E] holds where each group starts and how many images it has, so a batch of
    draws is three tensor lookups.
    """

    def __init__(self, labels: torch.Tensor, subjects: Optional[torch.Tensor], num_classes: int) -> None:
        self.num_classes = num_classes
        self.labels = labels
        self.by_class = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
        self.subjects = subjects
        if subjects is not None:
            n_subj = int(subjects.max()) + 1
            key = subjects * num_classes + labels
            self.order = torch.argsort(key, stable=True)
            counts = torch.bincount(key, minlength=n_subj * num_classes)
            self.count = counts.view(n_subj, num_classes)
            self.start = (torch.cumsum(counts, 0) - counts).view(n_subj, num_classes)

    def draw(self, idx: torch.Tensor, mode: str, own_prob: float,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(target z^t, same-subject I^t or -1, a real face with z^t) for the samples ``idx``.

        ``mode`` ``subject``: I^t is a random image of the same subject and z^t its label;
        ``uniform``: z^t uniform over the classes, I^t where the subject shows it. With probability
        ``own_prob`` a sample's own expression is the target and the sample itself its I^t. The real
        face is I^t where there is one, else a random image of z^t (the discriminator's real sample).
        """
        if mode == "subject":
            pair = self.any_of_subject(idx, generator)
            target = self.labels[pair]
        else:
            target = torch.randint(self.num_classes, idx.shape, generator=generator)
            pair = self.same_subject(idx, target, generator)
        if own_prob > 0:
            own = torch.rand(idx.shape, generator=generator) < own_prob
            target = torch.where(own, self.labels[idx], target)
            pair = torch.where(own, idx, pair)  # the source is I^t for its own expression
        return target, pair, torch.where(pair >= 0, pair, self.any_of_class(target, generator))

    def any_of_subject(self, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Index of a random image of subject(idx), any expression (the source itself included)."""
        if self.subjects is None:
            raise ValueError("drawing a same-subject target needs subject ids")
        s = self.subjects[idx]
        count = self.count[s].sum(1)
        pick = (torch.rand(idx.shape, generator=generator) * count).long()
        return self.order[self.start[s, 0] + pick]

    def same_subject(self, idx: torch.Tensor, target: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Index of a random image of subject(idx) with expression ``target``, or -1 where none exists."""
        if self.subjects is None:
            return torch.full_like(idx, -1)
        s = self.subjects[idx]
        count = self.count[s, target]
        pick = (torch.rand(idx.shape, generator=generator) * count.clamp_min(1)).long()
        found = self.order[(self.start[s, target] + pick).clamp_max(len(self.order) - 1)]
        return torch.where(count > 0, found, torch.full_like(idx, -1))

    def any_of_class(self, target: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Index of a random real image with expression ``target`` (any subject)."""
        out = torch.empty_like(target)
        for c in range(self.num_classes):
            sel = target == c
            if sel.any():
                pool = self.by_class[c]
                if len(pool) == 0:
                    raise DataError("<training set>", f"no training image of class {c}; every class needs one "
                                    "for the discriminator's real samples")
                out[sel] = pool[torch.randint(len(pool), (int(sel.sum()),), generator=generator)]
        return out
