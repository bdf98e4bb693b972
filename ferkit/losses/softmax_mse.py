"""Softmax-MSE (Zhai et al. 2017, section 3.3, eqs. 1-4): a regression *value*, a softmax *gradient*.

Forward (what is reported as the loss):

* eq. 1  ``p_k = exp(x_k - max X) / sum_i exp(x_i - max X)``
* eq. 2  ``y_hat_j = sum_k k * p_k`` (the expected class index of image j)
* eq. 3  ``L = 1/n * sum_j (y_hat_j - y_j)^2`` (n = batch size, no 1/2 factor in the paper)

Backward (eq. 4): "to maintain the advantage of Softmax loss function, we used the gradient of
Softmax loss function": ``dL_j/dx_i = p_i - 1`` for ``i = y_j`` and ``p_i`` otherwise, averaged
over the batch like the value of eq. 3 (the 1/n normalisation of Caffe's loss layers), times the
upstream gradient. This is deliberately NOT the derivative of the forward value, which is why it
needs a custom :class:`torch.autograd.Function` rather than plain tensor code.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn


def expected_class_mse(p: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eqs. 2-3 on class probabilities ``p`` ``[n, m]``: the mean squared error of the expected class index."""
    k = torch.arange(p.shape[1], device=p.device, dtype=p.dtype)
    return ((p @ k) - labels.to(p.dtype)).pow(2).mean()


class SoftmaxMSEFunction(torch.autograd.Function):
    """``apply(logits [n, m], labels int64 [n]) -> scalar``; see the module docstring."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        if logits.dim() != 2:
            raise ValueError(f"Softmax-MSE expects logits [n, m], got {tuple(logits.shape)}")
        if labels.shape != logits.shape[:1]:
            raise ValueError(f"labels must be [n={logits.shape[0]}], got {tuple(labels.shape)}")
        # half-precision logits (AMP) are computed in float32; float32/float64 keep their precision
        x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        p = torch.softmax(x, dim=1)  # eq. 1 (torch subtracts max(X) internally)
        loss = expected_class_mse(p, labels)  # eqs. 2-3
        ctx.save_for_backward(p, labels)
        ctx.logits_dtype = logits.dtype
        ctx.label_smoothing = float(label_smoothing)
        return loss.to(logits.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        p, labels = ctx.saved_tensors
        eps = ctx.label_smoothing
        # eq. 4; with label smoothing eps the softmax gradient is taken against the smoothed target
        # (1 - eps) onehot + eps / m, exactly as F.cross_entropy(..., label_smoothing=eps) does
        grad = p - eps / p.shape[1] if eps else p.clone()
        grad[torch.arange(p.shape[0], device=p.device), labels] -= 1.0 - eps
        grad = grad * (grad_output.to(p.dtype) / p.shape[0])
        return grad.to(ctx.logits_dtype), None, None


def softmax_mse(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Functional form of :class:`SoftmaxMSE` (``label_smoothing`` only changes the gradient)."""
    return SoftmaxMSEFunction.apply(logits, labels, label_smoothing)


class SoftmaxMSE(nn.Module):
    """Loss module: value of eqs. 1-3, gradient of eq. 4 (softmax cross-entropy's), batch-averaged."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        return SoftmaxMSEFunction.apply(logits, labels, label_smoothing)
