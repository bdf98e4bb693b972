"""How good are synthesised faces? FERSNet's Table V metric, identity similarity, sample grids.

* Expression accuracy (paper section IV-C, after StarGAN / ExprGAN): an expression classifier
  trained independently on real training faces only (the "judge") labels the faces synthesised
  from unseen test faces; a synthesised face counts as correct when the judge sees the target
  expression. Accuracy is reported over every (test face, target) pair.
* Identity similarity: mean cosine between the identity features (Light CNN or DeepID, whichever
  :class:`FrozenIdentity` loads) of each source face and its synthesised faces. To give the number
  a scale we also report the same cosine between real faces of the same subject and of different
  subjects in the test set.
* Sample grids: one row per source face, the source then one column per target expression.

Models may use different input sizes, channel counts and normalisations; every hand-over goes
through [0, 1] images and the receiving model's own :class:`Preprocessing`, so a judge or an
identity net trained on other crops is fed exactly the way its weights expect.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ferkit.data.classes import canonical
from ferkit.errors import NotFoundError, UsageError
from ferkit.losses.gan import mean_squared_norm
from ferkit.models.weights import (IDENTITY_RANK_METRIC, LoadedModel, Preprocessing, get_weights, load_weights,
                                  weights_with)

#: the identity architecture FERSNet's paper computes L_idt with (Light CNN-9): its shipped weights
#: come first among the calibrated ones when none is named (:func:`default_identity_weights`)
PAPER_IDENTITY_ARCHITECTURE = "lightcnn9"

def convert_images(x01: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """[0, 1] images ``[N, C, H, W]`` -> the normalised input of a model with ``preprocessing``.

    Resizes (bilinear, differentiable) and converts gray <-> RGB (ITU-R 601 luma), so gradients
    flow back to a generator when used inside a loss.
    """
    size = preprocessing.input_size
    if x01.shape[-1] != size or x01.shape[-2] != size:
        x01 = F.interpolate(x01, size=(size, size), mode="bilinear", align_corners=False,
                            antialias=x01.shape[-1] > size)
    want = preprocessing.channels
    if x01.shape[1] != want:
        if want == 3:
            x01 = x01.expand(-1, 3, -1, -1)
        else:
            w = torch.tensor([0.299, 0.587, 0.114], dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
            x01 = (x01 * w).sum(dim=1, keepdim=True)
    return preprocessing.normalize(x01)


def to_unit_range(x: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """Model-range images -> [0, 1] without clamping (keeps gradients at the borders)."""
    return x * preprocessing.std + preprocessing.mean


def default_identity_weights() -> Optional[str]:
    """The shipped identity net used when none is named, as the shipped cards say; None if none has one.

    Candidates are the shipped weights whose model gives an identity feature (:func:`weights_with`),
    ranked by (1) calibrated as a face descriptor (:attr:`Weights.identity_calibrated`: a threshold
    measured on held-out pairs) before an identity branch nobody measured, (2) the paper's
    architecture (:data:`PAPER_IDENTITY_ARCHITECTURE`) first, so L_idt is the one FERSNet was
    designed around and identity similarities stay comparable with those the shipped cards report
    (measured with Light CNN), (3) the best on :data:`IDENTITY_RANK_METRIC` (LFW, as enrolment ranks
    them), (4) the name. No list of weights names to keep up: new identity weights take part as
    soon as their card is shipped.
    """
    def rank(name: str) -> tuple[bool, bool, float, str]:
        w = get_weights(name)
        score = w.metrics.get(IDENTITY_RANK_METRIC)
        return (not w.identity_calibrated, w.architecture != PAPER_IDENTITY_ARCHITECTURE,
                -float(score) if score is not None else math.inf, name)

    candidates = weights_with("identity")
    return min(candidates, key=rank) if candidates else None


def resolve_identity_weights(name: Optional[str]) -> str:
    """``name`` itself, or :func:`default_identity_weights`."""
    if name:
        return name
    default = default_identity_weights()
    if default is None:
        raise NotFoundError(
            "no identity network for L_idt / identity similarity: no shipped weights have an identity feature; "
            "pass --identity-weights NAME_OR_CHECKPOINT (a Light CNN or DeepID checkpoint) or --identity-weights "
            "none to leave L_idt out")
    return default


class FrozenIdentity(nn.Module):
    """A frozen identity network behind one interface: faces in some model's range -> features.

    Used for FERSNet's L_idt (eq. 9; the paper's Light CNN, or DeepID until one is shipped) and for
    the identity-similarity metric. Parameters never train, but gradients flow through it to the
    images (that is what L_idt needs). It always runs in eval mode (BN running stats, no dropout).
    """

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__()
        if not getattr(loaded.model, "has_identity", False):
            raise UsageError(f"weights {loaded.weights.name!r} ({loaded.weights.architecture}) have no identity "
                             "feature; pass a Light CNN or DeepID identity network")
        self.net = loaded.model.eval()
        self.preprocessing = loaded.weights.preprocessing
        self.name = loaded.weights.name
        self.source = loaded.weights.source
        for p in self.net.parameters():
            p.requires_grad_(False)

    @classmethod
    def load(cls, name_or_path: Optional[str], device: Union[str, torch.device] = "cpu") -> "FrozenIdentity":
        return cls(load_weights(resolve_identity_weights(name_or_path), device=device))

    @classmethod
    def from_option(cls, value: Optional[str], device: Union[str, torch.device] = "cpu") -> Optional["FrozenIdentity"]:
        """An ``--identity-weights`` value: not given (None) = the default net, ``none`` = no identity net.

        One parser for every command that takes the option, so "not given" cannot be mistaken for
        "none" (``str(None).lower() == "none"`` once silently switched L_idt off).
        """
        if value is not None and value.strip().lower() == "none":
            return None
        return cls.load(value, device=device)

    def train(self, mode: bool = True) -> "FrozenIdentity":
        super().train(False)  # frozen: BN statistics and dropout stay in inference mode
        return self

    def forward(self, x: torch.Tensor, source: Preprocessing) -> torch.Tensor:
        """Identity features ``[N, D]`` of images ``x`` given in ``source``'s normalised range."""
        out = self.net(convert_images(to_unit_range(x.float(), source), self.preprocessing))
        if out.identity is None:
            raise ValueError(f"identity network {self.name!r} returned no identity feature")
        return out.identity.float()

    def distance(self, x: torch.Tensor, reference: torch.Tensor, source: Preprocessing,
                 norm: str = "sum") -> torch.Tensor:
        """FERSNet's L_idt (eq. 9): :func:`~ferkit.losses.gan.mean_squared_norm` between the features of
        ``x`` and of ``reference`` (both in ``source``'s range); gradients flow to ``x`` only."""
        features = self(x, source)
        with torch.no_grad():
            reference_features = self(reference, source)
        return mean_squared_norm(features, reference_features, norm=norm)


class Judge:
    """An independently trained expression classifier used to label synthesised faces (Table V)."""

    def __init__(self, loaded: LoadedModel, classes: Sequence[str]) -> None:
        self.loaded = loaded
        self.model = loaded.model.eval()
        self.preprocessing = loaded.weights.preprocessing
        judge_classes = [canonical(c) for c in loaded.weights.classes]
        wanted = [canonical(c) for c in classes]
        #: judge class index -> index in ``classes`` (or -1 when the generator has no such class)
        self.to_generator = torch.tensor([wanted.index(c) if c in wanted else -1 for c in judge_classes])
        #: generator classes the judge can recognise at all
        self.covered = [i for i, c in enumerate(wanted) if c in judge_classes]
        if not self.covered:
            raise UsageError(f"judge {loaded.weights.name!r} classes {loaded.weights.classes} share no class "
                             f"with {list(classes)}")

    @torch.no_grad()
    def predict(self, x: torch.Tensor, source: Preprocessing) -> torch.Tensor:
        """Generator-class index predicted for each image (-1 when the judge picked a class it lacks)."""
        inp = convert_images(to_unit_range(x.float(), source).clamp(0, 1), self.preprocessing)
        logits = self.model(inp.to(self.loaded.device)).logits
        return self.to_generator[logits.argmax(dim=1).cpu()]


def _pair_means(features: torch.Tensor, subjects: Optional[torch.Tensor]) -> dict[str, float]:
    """Mean cosine over real pairs of the same / of different subjects (scale for identity numbers)."""
    if subjects is None or features.shape[0] < 2:
        return {}
    f = F.normalize(features, dim=1)
    sim = f @ f.T
    same = subjects.view(-1, 1) == subjects.view(1, -1)
    off_diag = ~torch.eye(len(subjects), dtype=torch.bool)
    out = {}
    if (same & off_diag).any():
        out["identity_cosine_real_same_subject"] = float(sim[same & off_diag].mean())
    if (~same).any():
        out["identity_cosine_real_different_subjects"] = float(sim[~same].mean())
    return out


def _describe(name: str, source: Optional[str]) -> str:
    """A shipped entry by its name; a checkpoint by its path (names inside checkpoints repeat)."""
    return name if source is None or source.endswith(".json") else f"{name} ({source})"


@dataclass
class SynthesisReport:
    metrics: dict[str, Any]
    per_target_accuracy: dict[str, float]


@torch.no_grad()
def evaluate_synthesis(generator: LoadedModel, images: torch.Tensor, labels: torch.Tensor,
                       subjects: Optional[torch.Tensor], judge: Optional[Judge] = None,
                       identity: Optional[FrozenIdentity] = None, batch_size: int = 32) -> SynthesisReport:
    """Synthesise every expression of every face in ``images`` (uint8, generator's size) and score them."""
    model, pre, dev = generator.model.eval(), generator.weights.preprocessing, generator.device
    classes = list(generator.weights.classes)
    e = len(classes)
    hits = torch.zeros(e)
    counts = torch.zeros(e)
    real_hits, real_count = 0, 0
    cos_sum, cos_n = 0.0, 0
    real_feats: list[torch.Tensor] = []
    for start in range(0, images.shape[0], batch_size):
        x = pre.normalize(images[start:start + batch_size].to(dev))
        y = labels[start:start + batch_size]
        syn = model.synthesize_all(x)  # [B, E, C, H, W]
        b = x.shape[0]
        flat = syn.reshape(b * e, *x.shape[1:])
        targets = torch.arange(e).repeat(b)
        if judge is not None:
            pred = judge.predict(flat, pre)
            for t in judge.covered:
                sel = targets == t
                hits[t] += float((pred[sel] == t).sum())
                counts[t] += float(sel.sum())
            real_pred = judge.predict(x, pre)
            keep = torch.isin(y, torch.tensor(judge.covered))
            real_hits += int((real_pred[keep] == y[keep]).sum())
            real_count += int(keep.sum())
        if identity is not None:
            f_src = identity(x, pre).cpu()
            f_syn = identity(flat, pre).cpu().view(b, e, -1)
            cos = F.cosine_similarity(f_src.unsqueeze(1), f_syn, dim=2)
            cos_sum += float(cos.sum())
            cos_n += cos.numel()
            real_feats.append(f_src)
    metrics: dict[str, Any] = {"faces": int(images.shape[0]), "targets": e}
    per_target: dict[str, float] = {}
    if judge is not None:
        covered = counts > 0
        metrics["synthesis_accuracy"] = float(hits[covered].sum() / counts[covered].sum())
        if real_count:  # labelled test faces (photos carry no label to check the judge on)
            metrics["judge_accuracy_on_real_test_faces"] = real_hits / real_count
        metrics["judge"] = _describe(judge.loaded.weights.name, judge.loaded.weights.source)
        judged = set(judge.covered)
        unjudged = [canonical(classes[t]) for t in range(e) if t not in judged]
        if unjudged:  # e.g. contempt for a FER2013 judge: the accuracy is over the other targets
            metrics["targets_the_judge_lacks"] = ", ".join(unjudged)
        per_target = {canonical(classes[t]): float(hits[t] / counts[t]) for t in judge.covered}
    if identity is not None:
        metrics["identity_cosine_source_vs_synthesised"] = cos_sum / max(1, cos_n)
        metrics["identity_net"] = _describe(identity.name, identity.source)
        metrics.update(_pair_means(torch.cat(real_feats), subjects))
    return SynthesisReport(metrics, per_target)


# ---- sample grids ---------------------------------------------------------------------------------
#: source faces (rows) of a training run's sample grid
GRID_FACES = 6


def grid_faces(ds: Any, n: int = GRID_FACES) -> torch.Tensor:
    """The images of up to ``n`` faces of a ``FaceDataset``, one per class in class order (the middle
    image of each class): the rows of a training run's sample grids, fixed for the run."""
    picks: list[int] = []
    for c in range(len(ds.classes)):
        hit = torch.nonzero(ds.labels == c).flatten()
        if len(hit) and len(picks) < n:
            picks.append(int(hit[len(hit) // 2]))
    return ds.images[torch.tensor(picks, dtype=torch.long)]


@torch.no_grad()
def training_sample_grid(model: nn.Module, faces: torch.Tensor, preprocessing: Preprocessing,
                         classes: Sequence[str], scale: int = 2) -> np.ndarray:
    """:func:`synthesis_grid` of every expression synthesised from ``faces`` (uint8, on the model's
    device, already the model's size) by a FERSNet in training; the model is in eval mode for the pass."""
    model.eval()
    src = preprocessing.normalize(faces)
    syn = model.synthesize_all(src)
    model.train()
    return synthesis_grid(preprocessing.denormalize(src).cpu(), preprocessing.denormalize(syn).cpu(), classes,
                          scale=scale)


@torch.no_grad()
def every_expression_set(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                         preprocessing: Preprocessing, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every face of ``images`` (uint8 ``[N, C, H, W]``) synthesised with every expression, its own
    expression's slot keeping the real face: uint8 ``[N * E, C, H, W]`` and their labels ``[N * E]``,
    exactly one image per face and class (FERSNet's FES data augmentation, Table VI). The model (in
    training) is in eval mode for the pass."""
    model.eval()
    parts = []
    for start in range(0, len(images), batch_size):
        real = images[start:start + batch_size]
        syn = model.synthesize_all(preprocessing.normalize(real))  # [B, E, C, H, W]
        syn_u8 = (preprocessing.denormalize(syn) * 255).round().to(torch.uint8)
        syn_u8[torch.arange(len(real), device=real.device), labels[start:start + batch_size]] = real
        parts.append(syn_u8)
    model.train()
    stacked = torch.cat(parts)  # [N, E, C, H, W]
    classes = torch.arange(stacked.shape[1], device=images.device).repeat(len(stacked))
    return stacked.reshape(-1, *stacked.shape[2:]), classes


def synthesis_grid(sources01: torch.Tensor, synthesised01: torch.Tensor, classes: Sequence[str],
                   scale: int = 2, header: bool = True) -> np.ndarray:
    """RGB uint8 grid: one row per source face, columns = source, then one per target expression.

    ``sources01`` ``[B, C, H, W]`` and ``synthesised01`` ``[B, E, C, H, W]`` in [0, 1]; ``scale``
    enlarges each tile (nearest) so small faces stay visible; ``header`` writes the column names.
    """
    import cv2

    b, e, c, h, w = synthesised01.shape
    tiles = torch.cat([sources01.unsqueeze(1), synthesised01], dim=1).clamp(0, 1)  # [B, E+1, C, H, W]
    if c == 1:
        tiles = tiles.expand(-1, -1, 3, -1, -1)
    grid = (tiles.permute(0, 3, 1, 4, 2).reshape(b * h, (e + 1) * w, 3) * 255).round().byte().cpu().numpy()
    grid = np.ascontiguousarray(np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1))
    # thin separator after the source column
    grid[:, w * scale - 1: w * scale + 1] = (255, 255, 255)
    if not header:
        return grid
    tile_w = w * scale
    band = np.full((18, grid.shape[1], 3), 255, np.uint8)
    for i, name in enumerate(["source", *classes]):
        text = name[:max(3, tile_w // 7)]
        cv2.putText(band, text, (i * tile_w + 2, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([band, grid], axis=0)


#: picture formats a grid can be written as, by file suffix (cv2 encodes each)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def image_suffix(path: Union[str, Path]) -> str:
    """The picture format ``path`` names by its suffix; checked before the work whose result it will hold."""
    from ferkit.errors import UsageError

    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise UsageError(f"{path}: cannot tell the picture format from {suffix or 'no suffix'!r}; "
                         f"name the file with one of {', '.join(IMAGE_SUFFIXES)}")
    return suffix


def write_image(path: Union[str, Path], rgb: np.ndarray) -> None:
    """Write an RGB uint8 image atomically in the format its suffix names (cv2 encodes,
    ferkit.utils.io writes); PNG bytes in a file called ``.jpg`` confused viewers and uploads."""
    import cv2

    from ferkit.utils.io import atomic_write_bytes

    suffix = image_suffix(path)
    ok, buf = cv2.imencode(suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"could not encode {path} as {suffix}")
    atomic_write_bytes(Path(path), buf.tobytes())
