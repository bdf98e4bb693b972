"""Center loss (Wen et al. 2016) against hand-computed numbers: value, feature gradient, centre update."""
from __future__ import annotations

import pytest
import torch

from ferkit.losses.center import CenterLoss


def _loss_with(centers: list[list[float]], alpha: float = 0.5) -> CenterLoss:
    loss = CenterLoss(num_classes=len(centers), feature_dim=len(centers[0]), alpha=alpha)
    loss.centers.data.copy_(torch.tensor(centers))
    return loss


def test_value_is_half_mean_squared_distance_to_own_centre() -> None:
    loss = _loss_with([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    x = torch.tensor([[1.0, 2.0], [3.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 1, 1])
    # ||(1,2)-(0,0)||^2 = 5; ||(3,1)-(1,1)||^2 = 4; ||(1,1)-(1,1)||^2 = 0 -> (5 + 4 + 0) / (2 * 3) = 1.5
    assert loss(x, y).item() == pytest.approx(1.5)


def test_feature_gradient_is_difference_over_batch() -> None:
    loss = _loss_with([[0.0, 0.0], [1.0, 1.0]])
    x = torch.tensor([[1.0, 2.0], [3.0, 1.0]], requires_grad=True)
    loss(x, torch.tensor([0, 1])).backward()
    assert torch.allclose(x.grad, torch.tensor([[0.5, 1.0], [1.0, 0.0]]))
    assert loss.centers.grad is None  # centres move by Wen's rule only, never by autograd


def test_centre_update_follows_wen_eq4() -> None:
    loss = _loss_with([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]], alpha=0.5)
    x = torch.tensor([[1.0, 2.0], [3.0, 1.0], [1.0, 3.0]])
    y = torch.tensor([0, 1, 1])
    loss.update_centers(x, y)
    # class 0: delta = ((0,0)-(1,2)) / (1+1) = (-0.5,-1) -> c0 = (0,0) - 0.5*delta = (0.25, 0.5)
    # class 1: delta = ((1,1)-(3,1) + (1,1)-(1,3)) / (1+2) = (-2,-2)/3 -> c1 = (1,1) + (1/3, 1/3)
    # class 2: not in the batch -> unchanged
    expected = torch.tensor([[0.25, 0.5], [4.0 / 3.0, 4.0 / 3.0], [5.0, 5.0]])
    assert torch.allclose(loss.centers, expected)


def test_update_pulls_centre_toward_repeated_feature() -> None:
    loss = _loss_with([[0.0]], alpha=1.0)
    for _ in range(60):
        loss.update_centers(torch.tensor([[2.0], [2.0]]), torch.tensor([0, 0]))
    # each step moves 2/3 of the way: converges to the feature
    assert loss.centers.item() == pytest.approx(2.0, abs=1e-6)


def test_bad_labels_say_what_to_do() -> None:
    loss = CenterLoss(3, 2)
    with pytest.raises(ValueError, match="re-index"):
        loss(torch.zeros(2, 2), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="features"):
        loss(torch.zeros(2, 5), torch.tensor([0, 1]))


def test_centres_are_saved_in_the_state_dict() -> None:
    loss = _loss_with([[1.0, 2.0]])
    state = loss.state_dict()
    assert torch.equal(state["centers"], torch.tensor([[1.0, 2.0]]))
    other = CenterLoss(1, 2)
    other.load_state_dict(state)
    assert torch.equal(other.centers, loss.centers)
