"""FERSNet's objective (eq. 10) and its adversarial term (eq. 6).

L = L_cls + l1 L_GAN + l2 L_rec + l3 L_cyc + l4 L_idt, with l1 = 0.3, l2 = 1, l3 = 0.5 and l4
"set to 0.1 at the beginning, and ... gradually increased to 0.5" (section IV-A). The paper does
not say how l4 grows; we ramp it linearly over the epochs.

Eq. 6 is the conditional-GAN log loss. D maximises log D(z^t, I^t) + log(1 - D(z^t, G(z^t, I)));
for G we use the usual non-saturating form (maximise log D(z^t, G(...))), the one pix2pix and
StarGAN train with, because the minimax form gives G vanishing gradients while D wins early.
Both are written with ``binary_cross_entropy_with_logits`` on the patch logits (numerically
stable, autocast-safe), averaged over patches and batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-(log D(real) + log(1 - D(fake))): D's side of eq. 6 as a loss to minimise."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-log D(G(z^t, I)): G's non-saturating side of eq. 6."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


#: how eqs. 7-9 reduce each sample's squared difference: ``sum`` over its elements (the equations'
#: squared L2 norm, the paper's setting) or ``mean`` over them (the per-pixel MSE of the paper's text)
LOSS_NORMS = ("sum", "mean")


def mean_squared_norm(prediction: torch.Tensor, target: torch.Tensor,
                      mask: Optional[torch.Tensor] = None, norm: str = "sum") -> torch.Tensor:
    """(1/n) sum_i ||prediction_i - target_i||_2^2 over the samples where ``mask`` is True (eqs. 7-9).

    The squared norm SUMS over each sample's elements (pixels, or identity-feature dimensions),
    as the equations write it; the paper's text calls eq. 7 "mean squared error", but a per-pixel
    mean would shrink L_rec and L_cyc by the pixel count (2304 at 48x48) against the adversarial
    term, which is a per-patch mean, and the discriminator then drowns them (our first CPU runs,
    trained that way, synthesised noise). Samples without a target (no image of the same subject
    with the target expression) are left out of the mean instead of counting as zero, so the
    term's scale does not depend on how many targets a batch happens to have. With no valid
    sample it is an exact zero that still keeps the graph (so the caller need not special-case it).

    ``norm="mean"`` averages over each sample's elements instead (per-pixel MSE). Why offer it: with
    the sum, L_rec at 96x96 is ~9,216 times a per-pixel error and outweighs L_cls by two orders of
    magnitude, and the ConvFLU gates pass that gradient into the recognition stream (the 16-filter
    CPU model lost 14 points of recognition to it). With ``mean`` the lambdas become plain
    balance weights that do not change with the input size (the CPU recipe raises them to match).
    """
    if norm not in LOSS_NORMS:
        raise ValueError(f"norm must be one of {LOSS_NORMS}, got {norm!r}")
    diff = (prediction.float() - target.float()).pow(2).flatten(1)
    err = diff.sum(dim=1) if norm == "sum" else diff.mean(dim=1)
    if mask is None:
        return err.mean()
    mask = mask.to(err.dtype)
    return (err * mask).sum() / mask.sum().clamp_min(1.0)


@dataclass(frozen=True)
class FersnetLossWeights:
    """The lambdas of eq. 10 (paper values by default)."""

    gan: float = 0.3
    rec: float = 1.0
    cyc: float = 0.5
    idt_start: float = 0.1
    idt_end: float = 0.5
    #: weight of the synthesised face's classification into its target expression by the recognition
    #: stream (not in the paper's eq. 10; StarGAN's L_cls^f). 0 = the paper's objective.
    cls_fake: float = 0.0
    #: weights of the masked output's regularisers (FERSNet ``output="masked"``; not in the paper):
    #: the mask's mean (paint only what must change) and its total variation (in smooth regions)
    mask: float = 0.0
    mask_tv: float = 0.0
    #: weight of L_rec + L_cyc (with their own lambdas) on the decoder's painted image before the
    #: mask blends it, so the FES stream still models the whole face
    painted: float = 0.0

    def idt(self, epoch: int, epochs: int) -> float:
        """l4 at ``epoch`` (0-based) of ``epochs``: linear from idt_start to idt_end."""
        if epochs <= 1:
            return self.idt_end
        frac = min(max(epoch / (epochs - 1), 0.0), 1.0)
        return self.idt_start + (self.idt_end - self.idt_start) * frac


def mask_regularisers(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean of the mask, mean absolute difference of neighbouring mask values) of ``[B, 1, H, W]``.

    GANimation's attention-mask terms (Pumarola et al., 2018), as per-element means so their weights
    do not change with the input size. The mean is the share of the face the decoder repaints: it
    pushes towards copying the input wherever the other terms do not ask for a change, which is what
    keeps the person. The total variation keeps the painted region in one piece instead of a
    speckle of copied and painted pixels.
    """
    m = mask.float()
    tv = (m[..., 1:, :] - m[..., :-1, :]).abs().mean() + (m[..., :, 1:] - m[..., :, :-1]).abs().mean()
    return m.mean(), tv
