"""augment_batch: shape/range kept, flips exact, shift/rotation are the affine maps they claim."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ferkit.data.augment import augment_batch


def test_shape_dtype_range_and_seed():
    x = torch.rand(16, 1, 48, 48)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = augment_batch(x, generator=g1), augment_batch(x, generator=g2)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert a.min() >= x.min() - 1e-6 and a.max() <= x.max() + 1e-6
    assert not torch.equal(a, x)


def test_flip_only_is_exact():
    x = torch.rand(64, 3, 8, 8)
    y = augment_batch(x, generator=torch.Generator().manual_seed(0), max_shift=0, max_rotation_deg=0)
    flipped = [torch.equal(y[i], x[i].flip(-1)) for i in range(64)]
    same = [torch.equal(y[i], x[i]) for i in range(64)]
    assert all(f or s for f, s in zip(flipped, same))
    assert 16 < sum(flipped) < 48  # about half flipped


def test_pure_shift_moves_pixels_by_the_drawn_amount():
    # a shift of exactly 0.25 of a 16-px image is 4 whole pixels: bilinear sampling is exact then
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 8, 8] = 1.0
    g = torch.Generator().manual_seed(0)
    y = augment_batch(x, generator=g, flip=False, max_shift=0.25, max_rotation_deg=0, padding_mode="zeros")
    # recompute the draw with the same generator sequence
    g = torch.Generator().manual_seed(0)
    torch.rand(1, generator=g)  # angle
    tx = (torch.rand(1, generator=g) * 0.5 - 0.25).item()
    ty = (torch.rand(1, generator=g) * 0.5 - 0.25).item()
    theta = torch.tensor([[[1.0, 0.0, 2 * tx], [0.0, 1.0, 2 * ty]]])
    ref = F.grid_sample(x, F.affine_grid(theta, [1, 1, 16, 16], align_corners=False), align_corners=False)
    assert torch.allclose(y, ref, atol=1e-6)
    # output(p) = input(p + t): the bright pixel moves by -t * 16 pixels
    cy, cx = divmod(int(y.flatten().argmax()), 16)
    assert abs(cx - (8 - tx * 16)) <= 1 and abs(cy - (8 - ty * 16)) <= 1


def test_rotation_moves_a_point_by_the_drawn_angle():
    # output(p) = input(R(a) p): an input dot at q (relative to the centre) shows up at R(-a) q
    size, r = 65, 20
    x = torch.zeros(1, 1, size, size)
    x[0, 0, size // 2, size // 2 + r] = 1.0
    y = augment_batch(x, generator=torch.Generator().manual_seed(5), flip=False, max_shift=0.0,
                      max_rotation_deg=40.0, padding_mode="zeros")
    angle = (torch.rand(1, generator=torch.Generator().manual_seed(5)) * 80 - 40).item() * math.pi / 180
    assert abs(angle) > 0.05
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    w = y[0, 0]
    cx = float((w * cols).sum() / w.sum()) - size // 2
    cy = float((w * rows).sum() / w.sum()) - size // 2
    assert abs(cx - r * math.cos(angle)) < 0.6 and abs(cy + r * math.sin(angle)) < 0.6


def test_rejects_uint8():
    with pytest.raises(ValueError):
        augment_batch(torch.zeros(1, 1, 4, 4, dtype=torch.uint8))
