"""Training-time augmentation on the training device: random horizontal flip, shift and rotation.

TFE-JL (section 4) augments FER+ training images "with horizontal flipping, shifting and
rotation" without giving ranges; we default to shifts up to 10% of the side and rotations up to
10 degrees, the usual CIFAR/FER settings, and every range is an argument. The whole batch is
transformed with one ``affine_grid`` + ``grid_sample`` call, so it runs on the GPU with the model
instead of in data-loader workers. Flips are done by exact index reversal (no interpolation).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ferkit.errors import UsageError


def parse_augment(spec: str, allowed: Sequence[str]) -> set[str]:
    """The items of an ``--augment`` comma list ('none' or '' = none), refusing any not in ``allowed``."""
    spec = str(spec).lower()
    parts = set() if spec in {"", "none"} else {a.strip() for a in spec.split(",")}
    unknown = parts - set(allowed)
    if unknown:
        raise UsageError(f"--augment: unknown item(s) {sorted(unknown)}; use {', '.join(allowed)} or none")
    return parts


def _uniform(n: int, low: float, high: float, generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def augment_batch(x: torch.Tensor, generator: Optional[torch.Generator] = None, flip: bool = True,
                  max_shift: float = 0.1, max_rotation_deg: float = 10.0, max_scale: float = 0.0,
                  padding_mode: str = "border") -> torch.Tensor:
    """Randomly flip / shift / rotate each image of a float ``[N, C, H, W]`` batch.

    ``max_shift`` is a fraction of the image side (0.1 = up to 4.8 px on 48x48) drawn uniformly
    per image and axis; ``max_rotation_deg`` likewise, about the image centre; ``max_scale`` 0.1
    zooms each image by a factor drawn from [0.9, 1.1] (> 1 enlarges the face). ``generator`` (on
    ``x.device``) makes the draw reproducible. Values stay inside the input's range: flips copy
    pixels and bilinear sampling with ``border`` padding only takes convex combinations of them.
    """
    if x.dim() != 4:
        raise ValueError(f"expected [N, C, H, W], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError("augment_batch works on float images; convert uint8 first")
    n, _, h, w = x.shape
    device = x.device
    out = x
    if flip:
        mask = torch.rand(n, generator=generator, device=device) < 0.5
        out = torch.where(mask[:, None, None, None], x.flip(-1), x)
    if max_shift <= 0 and max_rotation_deg <= 0 and max_scale <= 0:
        return out
    angle = _uniform(n, -max_rotation_deg, max_rotation_deg, generator, device) * (math.pi / 180.0)
    # normalised coordinates span 2 units per side, so a shift of f * side is 2 f
    tx = _uniform(n, -max_shift, max_shift, generator, device) * 2.0
    ty = _uniform(n, -max_shift, max_shift, generator, device) * 2.0
    # the grid maps output to input coordinates, so zooming in by s divides the linear part by s
    inv_scale = 1.0 / _uniform(n, 1.0 - max_scale, 1.0 + max_scale, generator, device) if max_scale > 0 \
        else torch.ones(n, device=device)
    cos, sin = torch.cos(angle) * inv_scale, torch.sin(angle) * inv_scale
    theta = torch.stack([
        torch.stack([cos, -sin * h / w, tx], dim=1),
        torch.stack([sin * w / h, cos, ty], dim=1),
    ], dim=1).to(out.dtype)
    grid = F.affine_grid(theta, list(out.shape), align_corners=False)
    return F.grid_sample(out, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def random_resized_crop(x: torch.Tensor, min_area: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Zoom each image into a random square window covering ``min_area``..1 of it, anywhere inside.

    The window side is ``sqrt(area)`` of the image side; its centre is drawn so the window stays in
    the image (no padding is ever sampled). Bilinear resampling back to the input size.
    """
    if not 0.0 < min_area <= 1.0:
        raise UsageError(f"--crop-area must be in (0, 1], got {min_area}")
    n = x.shape[0]
    side = torch.sqrt(torch.rand(n, generator=generator, device=x.device) * (1.0 - min_area) + min_area)
    room = 1.0 - side  # normalised coordinates span [-1, 1]: the centre may move by 1 - side
    tx = (torch.rand(n, generator=generator, device=x.device) * 2 - 1) * room
    ty = (torch.rand(n, generator=generator, device=x.device) * 2 - 1) * room
    zero = torch.zeros_like(side)
    theta = torch.stack([torch.stack([side, zero, tx], 1), torch.stack([zero, side, ty], 1)], 1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def photometric_jitter(x: torch.Tensor, strength: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Per-image brightness, contrast and gamma changes of a [0, 1] batch; the result stays in [0, 1].

    With ``strength`` j: gamma ``exp(U(-j, j))``, contrast factor ``1 + U(-j, j)`` about the image
    mean, brightness offset ``U(-j/2, j/2)``.
    """
    if strength <= 0:
        return x
    n = x.shape[0]

    def u(low: float, high: float) -> torch.Tensor:
        return (torch.rand(n, 1, 1, 1, generator=generator, device=x.device) * (high - low) + low).to(x.dtype)

    out = x.clamp(0.0, 1.0).pow(torch.exp(u(-strength, strength)))
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * (1.0 + u(-strength, strength)) + mean + u(-strength / 2, strength / 2)
    return out.clamp(0.0, 1.0)


def random_downsample(x: torch.Tensor, probability: float, min_factor: float,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """With ``probability`` per image, shrink by a factor in [``min_factor``, 1) and scale back up:
    the blur of low-resolution faces (webcams, LFW's small faces) the crops never show."""
    if probability <= 0:
        return x
    n, _, h, w = x.shape
    pick = torch.rand(n, generator=generator, device=x.device) < probability
    if not bool(pick.any()):
        return x
    factor = float(torch.rand(1, generator=generator, device=x.device)) * (1.0 - min_factor) + min_factor
    small = F.interpolate(x[pick], size=(max(4, round(h * factor)), max(4, round(w * factor))),
                          mode="bilinear", align_corners=False, antialias=True)
    out = x.clone()
    out[pick] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return out


def random_flip_and_rotation_from(x: torch.Tensor, angles_deg: Sequence[float],
                                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Rotate each image of ``[N, C, H, W]`` by one of ``angles_deg`` (drawn uniformly) and flip half of them.

    Exact flips (index reversal); rotations about the centre with bilinear sampling and border
    padding, so values stay within the input's range.
    """
    n = x.shape[0]
    angles = torch.tensor(angles_deg, device=x.device, dtype=x.dtype)
    pick = torch.randint(len(angles_deg), (n,), generator=generator, device=x.device)
    flip = torch.rand(n, generator=generator, device=x.device) < 0.5
    out = torch.where(flip[:, None, None, None], x.flip(-1), x)
    rad = angles[pick] * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(out.shape), align_corners=False)
    return F.grid_sample(out, grid, mode="bilinear", padding_mode="border", align_corners=False)
