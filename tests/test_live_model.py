"""The ferkit-live student: its architecture (resnet_live) and its distillation recipe, on fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ferkit.inference import to_model_input
from ferkit.models import create_model
from ferkit.models.weights import get_weights, load_weights
from ferkit.recipes.registry import get_recipe
from ferkit.training.engine import train
from tests.fixtures.datasets import make_ferplus_tree
from tests.fixtures.train_context import LocalContext

_VOTES = [[10, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 8, 2, 0, 0, 0, 0, 0, 0, 0], [0, 0, 9, 0, 0, 0, 1, 0, 0, 0],
          [0, 0, 0, 7, 3, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 6, 4, 0], [0, 0, 0, 0, 8, 0, 0, 0, 0, 2]]


def _conv_macs(model: nn.Module, size: int = 48) -> int:
    """Multiply-adds of every convolution for one ``size`` x ``size`` gray image (forward hooks)."""
    total = [0]

    def hook(mod: nn.Conv2d, _inp: tuple, out: torch.Tensor) -> None:
        total[0] += out[0].numel() * mod.weight[0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 1, size, size))
    for h in handles:
        h.remove()
    return total[0]


def test_resnet_live_keeps_resnet18_blocks_on_quarter_maps() -> None:
    live, teacher = create_model("resnet_live"), create_model("resnet18_fer")
    assert len(live.blocks) == len(teacher.blocks) == 9
    # same widths, so nearly the same parameters (the strided first block adds a 1x1 projection)
    n_live = sum(p.numel() for p in live.parameters())
    n_teacher = sum(p.numel() for p in teacher.parameters())
    assert abs(n_live - n_teacher) < 0.01 * n_teacher
    sizes = []
    hooks = [b.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1])) for b in live.blocks]
    out = live.eval()(torch.zeros(2, 1, 48, 48))
    for h in hooks:
        h.remove()
    assert sizes == [24, 24, 24, 12, 12, 12, 6, 6, 6]
    assert out.logits.shape == (2, 8) and out.embedding.shape == (2, 64)
    assert _conv_macs(live) * 3 < _conv_macs(teacher)


@pytest.fixture(scope="module")
def ferplus_with_teacher(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp_path = tmp_path_factory.mktemp("distill")
    root = tmp_path / "ferplus"
    make_ferplus_tree(root / "FER2013Train", votes=_VOTES * 4)
    make_ferplus_tree(root / "FER2013Valid", votes=_VOTES, start=1000)
    teacher = get_recipe("tfe-jl/resnet18-ferplus")(root, {"batch_size": 8, "schedule_epochs": 1})
    train(teacher, tmp_path / "teacher", epochs=1, device="cpu", json_lines=False)
    return root, tmp_path / "teacher" / "checkpoint.pt"


def test_distillation_targets_and_loss_follow_hinton(ferplus_with_teacher: tuple[Path, Path], tmp_path: Path) -> None:
    root, teacher_ckpt = ferplus_with_teacher
    recipe = get_recipe("live/ferplus-distill")(root, {"batch_size": 8, "teacher": str(teacher_ckpt),
                                                       "alpha": 0.6, "temperature": 3.0})
    recipe.setup(LocalContext(tmp_path))
    # teacher logits: the mean of each clean training image's and its mirror's logits
    teacher = load_weights(teacher_ckpt, device="cpu")
    x = recipe.x_train[:5].float() / 255.0
    prep = teacher.weights.preprocessing
    with torch.no_grad():
        expect = 0.5 * (teacher.model(to_model_input(x, prep)).logits + teacher.model(to_model_input(x.flip(-1), prep)).logits)
    assert torch.allclose(recipe.teacher_logits[:5], expect, atol=1e-4)
    # loss = (1 - a) CE(student, votes) + a T^2 KL(teacher_T || student_T)
    idx = torch.arange(5)
    out = recipe.model(recipe.inputs(recipe.x_train[idx], augment=False))
    loss, extra = recipe._batch_loss(out, idx)
    s, t, votes = out.logits.float(), recipe.teacher_logits[idx], recipe.soft_train[idx]
    ce = -(votes * F.log_softmax(s, 1)).sum(1).mean()
    p_t = F.softmax(t / 3.0, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / 3.0, 1))).sum(1).mean()
    assert float(loss.detach()) == pytest.approx(float(0.4 * ce + 0.6 * 9.0 * kl), rel=1e-4)
    assert float(extra["distill_loss"]) == pytest.approx(float(9.0 * kl), rel=1e-4)


def test_distilled_student_trains_and_ships_as_ferkit_live(ferplus_with_teacher: tuple[Path, Path],
                                                          tmp_path: Path) -> None:
    root, teacher_ckpt = ferplus_with_teacher
    recipe = get_recipe("live/ferplus-distill")(root, {"batch_size": 8, "teacher": str(teacher_ckpt), "lr": 0.05})
    ctx = LocalContext(tmp_path)
    recipe.setup(ctx)
    idx = torch.arange(8)
    x = recipe.inputs(recipe.x_train[idx], augment=False)
    recipe.model.train()
    losses = []
    for _ in range(25):
        loss, _ = recipe._batch_loss(recipe.model(x), idx)
        ctx.step(loss, recipe.optimizer)
        losses.append(float(loss.detach()))
    # the floor is (1 - alpha) * the entropy of the votes, not 0
    assert losses[-1] < 0.6 * losses[0]

    run = get_recipe("live/ferplus-distill")(root, {"batch_size": 8, "teacher": str(teacher_ckpt), "schedule_epochs": 1})
    end = train(run, tmp_path / "live", epochs=1, device="cpu", json_lines=False)
    assert end["status"] == "completed"
    card = get_weights(tmp_path / "live" / "checkpoint.pt")
    assert card.name == "ferkit-live" and card.architecture == "resnet_live" and card.tta == "none"
    assert card.training_options["teacher"] == str(teacher_ckpt) and card.training_options["alpha"] == 0.7


def test_distillation_refuses_bad_settings(ferplus_with_teacher: tuple[Path, Path], tmp_path: Path) -> None:
    root, teacher_ckpt = ferplus_with_teacher
    with pytest.raises(ValueError, match="--alpha"):
        get_recipe("live/ferplus-distill")(root, {"teacher": str(teacher_ckpt), "alpha": 1.5}).setup(LocalContext(tmp_path))
