"""One batched forward pass over a stack of images, shared by recipes, evaluation and inference.

Why one helper: ``ferkit eval``, every recipe's validation, ``ferkit cv``, verification and
synthesis evaluation all turn uint8 crops into model input and run the model in chunks. Doing that
in one place means test-time augmentation is applied identically everywhere. Validation during
training runs under the run's autocast (bf16 on capable CPUs and GPUs) while ``ferkit eval`` runs
fp32, so the two can differ by a few hundredths of a point (a test bounds it at 0.3 points).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ferkit.models.weights import check_tta

DEFAULT_BATCH = 512


@torch.no_grad()
def batched_forward(model: nn.Module, images: torch.Tensor, to_input: Callable[[torch.Tensor], torch.Tensor],
                    *, batch_size: int = DEFAULT_BATCH, select: Callable[[Any], torch.Tensor] = lambda o: o.logits,
                    autocast: Optional[Callable[[], Any]] = None) -> torch.Tensor:
    """``select(model(to_input(chunk)))`` over ``images`` in chunks, concatenated as float32.

    ``to_input`` maps a chunk of stored images (usually uint8 on the model's device) to model
    input; ``select`` picks the output tensor (logits, an identity feature...). The model is put in
    eval mode for the pass and returned to its previous mode afterwards.
    """
    was_training = model.training
    model.eval()
    outs = []
    try:
        for start in range(0, images.shape[0], batch_size):
            x = to_input(images[start:start + batch_size])
            if autocast is not None:
                with autocast():
                    out = select(model(x))
            else:
                out = select(model(x))
            outs.append(out.float())
    finally:
        model.train(was_training)
    if not outs:
        raise ValueError("batched_forward: no images")
    return torch.cat(outs)


def class_probabilities(model: nn.Module, images: torch.Tensor, to_input: Callable[[torch.Tensor], torch.Tensor],
                        *, tta: str = "none", batch_size: int = DEFAULT_BATCH,
                        autocast: Optional[Callable[[], Any]] = None) -> torch.Tensor:
    """Softmax class probabilities; ``tta="flip"`` averages them with those of the mirrored images.

    Flip TTA averages probabilities (not logits), the usual choice: a confident view is not
    cancelled out by a large negative logit of the other.
    """
    tta = check_tta(tta)
    kw = dict(batch_size=batch_size, autocast=autocast)
    probs = F.softmax(batched_forward(model, images, to_input, **kw), dim=1)
    if tta == "flip":
        probs = 0.5 * (probs + F.softmax(batched_forward(model, images, lambda x: to_input(x.flip(-1)), **kw), dim=1))
    return probs


def validation_metrics(predict: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                       labels: torch.Tensor, tta: str) -> dict[str, float]:
    """A training run's validation figures: ``val_accuracy`` and ``val_loss`` with the run's TTA, and
    ``val_accuracy_no_tta`` beside them when TTA is on.

    ``predict`` gives class probabilities without TTA. The plain pass runs once: it is both the
    no-TTA figure and half of the flip mean, so a flip-TTA validation costs two passes, not three.
    Every recipe reports through here, so the figures mean the same in every card and curve.
    """
    tta = check_tta(tta)
    plain = predict(images)
    probs = 0.5 * (plain + predict(images.flip(-1))) if tta == "flip" else plain
    y = labels.to(probs.device)
    metrics = {"val_accuracy": float((probs.argmax(1) == y).float().mean()),
               "val_loss": float(F.nll_loss(probs.clamp_min(1e-8).log(), y))}
    if tta != "none":
        metrics["val_accuracy_no_tta"] = float((plain.argmax(1) == y).float().mean())
    return metrics
