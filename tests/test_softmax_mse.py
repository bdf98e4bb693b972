"""Softmax-MSE: forward value = eqs. 1-3, gradient = eq. 4 (softmax cross-entropy's), batch-averaged."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ferkit.losses.softmax_mse import SoftmaxMSE, softmax_mse


def paper_value(logits: list[list[float]], labels: list[int]) -> float:
    """Eqs. 1-3 written out with plain Python floats."""
    n = len(logits)
    total = 0.0
    for x, y in zip(logits, labels):
        mx = max(x)
        e = [math.exp(v - mx) for v in x]  # eq. 1
        s = sum(e)
        p = [v / s for v in e]
        y_hat = sum(k * pk for k, pk in enumerate(p))  # eq. 2
        total += (y_hat - y) ** 2
    return total / n  # eq. 3


def paper_gradient(logits: list[list[float]], labels: list[int]) -> list[list[float]]:
    """Eq. 4 per image (p_i - 1 for the label, p_i otherwise), averaged over the n images like eq. 3."""
    n = len(logits)
    out = []
    for x, y in zip(logits, labels):
        mx = max(x)
        e = [math.exp(v - mx) for v in x]
        s = sum(e)
        out.append([(v / s - (1.0 if i == y else 0.0)) / n for i, v in enumerate(e)])
    return out


LOGITS = [[2.0, -1.0, 0.5, 0.0, 3.0, -2.0, 1.0], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
          [10.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]
LABELS = [4, 0, 6]


def test_forward_equals_eqs_1_to_3() -> None:
    x = torch.tensor(LOGITS, dtype=torch.float64)
    y = torch.tensor(LABELS)
    assert softmax_mse(x, y).item() == pytest.approx(paper_value(LOGITS, LABELS), rel=1e-12)
    # a hand-checkable case: uniform scores over 3 classes -> y_hat = 1; labels 0 and 2 -> L = (1 + 1) / 2
    assert SoftmaxMSE()(torch.zeros(2, 3), torch.tensor([0, 2])).item() == pytest.approx(1.0)
    # eq. 1 subtracts max(X): huge logits stay finite
    assert math.isfinite(softmax_mse(torch.tensor([[1e4, 0.0]]), torch.tensor([1])).item())


def test_backward_equals_eq_4() -> None:
    x = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
    loss = softmax_mse(x, torch.tensor(LABELS))
    loss.backward()
    torch.testing.assert_close(x.grad, torch.tensor(paper_gradient(LOGITS, LABELS), dtype=torch.float64))


def test_backward_scales_with_upstream_gradient() -> None:
    x = torch.tensor(LOGITS, requires_grad=True)
    (3.0 * softmax_mse(x, torch.tensor(LABELS))).backward()
    torch.testing.assert_close(x.grad, 3.0 * torch.tensor(paper_gradient(LOGITS, LABELS)))


def test_gradient_is_the_finite_difference_of_softmax_cross_entropy() -> None:
    """gradcheck-style: eq. 4 is the derivative of the mean softmax cross-entropy, checked numerically."""
    x0 = torch.tensor(LOGITS, dtype=torch.float64)
    y = torch.tensor(LABELS)
    x = x0.clone().requires_grad_(True)
    softmax_mse(x, y).backward()
    eps = 1e-6
    numeric = torch.zeros_like(x0)
    for j in range(x0.shape[0]):
        for i in range(x0.shape[1]):
            plus, minus = x0.clone(), x0.clone()
            plus[j, i] += eps
            minus[j, i] -= eps
            numeric[j, i] = (F.cross_entropy(plus, y) - F.cross_entropy(minus, y)) / (2 * eps)
    torch.testing.assert_close(x.grad, numeric, atol=1e-8, rtol=1e-6)


def test_gradient_is_not_the_derivative_of_the_value() -> None:
    """The paper keeps the softmax gradient on purpose; the MSE value's own derivative differs."""
    x = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(LABELS)
    p = torch.softmax(x, 1)
    plain = ((p @ torch.arange(7, dtype=torch.float64)) - y).pow(2).mean()
    (plain_grad,) = torch.autograd.grad(plain, x)
    x2 = x.detach().clone().requires_grad_(True)
    softmax_mse(x2, y).backward()
    assert not torch.allclose(plain_grad, x2.grad, atol=1e-3)


def test_dtype_and_shape_checks() -> None:
    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    loss = softmax_mse(x, torch.tensor([0, 1, 2, 3]))
    assert loss.dtype == torch.float64 and loss.dim() == 0
    loss.backward()
    assert x.grad.dtype == torch.float64
    with pytest.raises(ValueError):
        softmax_mse(torch.randn(4, 7), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        softmax_mse(torch.randn(4, 7, 1), torch.tensor([0, 1, 2, 3]))


def test_value_goes_down_when_trained_with_eq_4() -> None:
    torch.manual_seed(0)
    feats = torch.randn(64, 10)
    labels = (feats @ torch.randn(10, 7)).argmax(1)  # learnable labels (a linear teacher)
    layer = torch.nn.Linear(10, 7)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    crit = SoftmaxMSE()
    first = crit(layer(feats), labels).item()
    for _ in range(200):
        opt.zero_grad()
        crit(layer(feats), labels).backward()
        opt.step()
    assert crit(layer(feats), labels).item() < 0.25 * first
