"""Identity ensemble: several identity nets read the same face; its feature is theirs side by side.

Why it exists: DeepID and DeepID2 never verify with one ConvNet; they concatenate the features of
many nets (trained on different patches or from different starts) and that combination, not a
single net, is what reaches their LFW numbers. Nets trained from different random starts make
partly independent errors on strangers, so the combination verifies better than any member.

The feature is the members' L2-normalised features concatenated and divided by sqrt(K): its cosine
similarity between two faces is exactly the mean of the members' cosine similarities (equal
votes, whatever each member's feature scale), and it has unit norm. The logits are the mean of the
members' identity logits, which is only meaningful because every member must be trained on the
same identity classes (:func:`check_members` refuses anything else).

On a card, ``model_cfg = {"members": [{"architecture": ..., "model_cfg": {...}}, ...]}`` and the
state dict holds each member under ``members.<i>.``; ``ferkit export-weights --ensemble`` writes both.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ferkit.errors import UsageError
from ferkit.models.base import FerModel
from ferkit.models.outputs import ModelOutput
from ferkit.models.registry import create_model, register_model

PAPER = "Sun et al., Deep Learning Face Representation by Joint Identification-Verification (DeepID2), 2014"

#: the fewest members an ensemble may have (one net is just that net: ship it directly)
MIN_MEMBERS = 2


def check_members(members: Sequence[Mapping[str, Any]]) -> None:
    """Refuse member lists that cannot be combined, saying what is wrong."""
    if len(members) < MIN_MEMBERS:
        raise ValueError(f"an identity ensemble needs at least {MIN_MEMBERS} members, got {len(members)}")
    for i, spec in enumerate(members):
        if not isinstance(spec, Mapping) or "architecture" not in spec:
            raise ValueError(f"ensemble member {i} must be a mapping with 'architecture' (and 'model_cfg'), "
                             f"got {spec!r}")


class IdentityEnsemble(FerModel):
    """K identity nets fed the same preprocessed face; feature = normalised member features concatenated."""

    has_identity = True

    def __init__(self, members: Sequence[Mapping[str, Any]]) -> None:
        super().__init__()
        check_members(members)
        specs = [{"architecture": str(m["architecture"]), "model_cfg": dict(m.get("model_cfg") or {})} for m in members]
        nets = [create_model(s["architecture"], **s["model_cfg"]) for s in specs]
        for spec, net in zip(specs, nets):
            if not getattr(net, "has_identity", False):
                raise UsageError(f"ensemble member {spec['architecture']!r} has no identity feature")
        class_counts = {int(net.num_classes) for net in nets}
        if len(class_counts) != 1:
            raise UsageError(f"ensemble members are trained on different identity sets (class counts "
                             f"{sorted(class_counts)}); their logits cannot be averaged: train them on the same data")
        self.num_classes = class_counts.pop()
        self.members = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor, *, return_gates: bool = False) -> ModelOutput:
        outs = [net(x) for net in self.members]
        for out in outs:
            if out.identity is None:
                raise RuntimeError("an ensemble member returned no identity feature")
        scale = 1.0 / math.sqrt(len(outs))
        identity = torch.cat([F.normalize(o.identity.float(), dim=1) for o in outs], dim=1) * scale
        logits = torch.stack([o.logits.float() for o in outs]).mean(0)
        return ModelOutput(logits=logits, identity=identity, identity_logits=logits)


@register_model("identity_ensemble", paper=PAPER,
                small_cfg={"members": [{"architecture": "deepid", "model_cfg": {"num_classes": 20}}] * 2})
def identity_ensemble(members: Sequence[Mapping[str, Any]]) -> IdentityEnsemble:
    """Several identity nets on the same face; cosine of the feature = mean of the members' cosines."""
    return IdentityEnsemble(members)
