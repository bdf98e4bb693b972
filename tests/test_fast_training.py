"""The training fast path and the converging recipe: precision, vote targets, schedules,
augmentation, EMA, TTA, FER2013 evaluation; each checked against what it must compute."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ferkit.data.augment import augment_batch
from ferkit.data.ferplus import emotional_label, load_ferplus
from ferkit.evaluation.forward import class_probabilities, validation_metrics
from ferkit.inference import Predictor, merge_flip_outputs
from ferkit.losses.softmax_mse import softmax_mse
from ferkit.models.outputs import ModelOutput
from ferkit.recipes import base
from ferkit.recipes.base import make_schedule
from ferkit.training import precision as precision_mod
from ferkit.training.engine import train
from ferkit.training.precision import resolve_precision
from ferkit.recipes.registry import get_recipe
from tests.fixtures.datasets import make_fer2013_emotion_tree, make_ferplus_tree
from tests.fixtures.train_context import LocalContext

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERKIT_CACHE", "off")


# ---- precision ---------------------------------------------------------------------------------
def test_precision_auto_follows_the_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision_mod, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", CPU) is torch.bfloat16
    monkeypatch.setattr(precision_mod, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", CPU) is None
    assert resolve_precision("bf16", CPU) is torch.bfloat16  # asked for explicitly: honoured
    assert resolve_precision("fp32", CPU) is None
    with pytest.raises(ValueError, match="CUDA"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ValueError, match="--precision"):
        resolve_precision("half", CPU)


@pytest.fixture()
def ferplus_root(tmp_path: Path) -> Path:
    root = tmp_path / "ferplus"
    votes = [[10, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 8, 2, 0, 0, 0, 0, 0, 0, 0], [0, 0, 9, 0, 0, 0, 1, 0, 0, 0],
             [0, 0, 0, 7, 3, 0, 0, 0, 0, 0], [0, 0, 4, 0, 0, 0, 3, 0, 3, 0], [4, 0, 0, 4, 1, 0, 0, 0, 1, 0],
             [0, 0, 0, 0, 0, 0, 0, 0, 7, 3]]
    make_ferplus_tree(root / "FER2013Train", votes=votes * 3)
    make_ferplus_tree(root / "FER2013Valid", votes=votes[:4], start=1000)
    return root


def test_bf16_run_records_precision_and_restores_threads(ferplus_root: Path, tmp_path: Path) -> None:
    recipe = get_recipe("tfe-jl/resnet18-ferplus")(ferplus_root, {"batch_size": 8, "max_steps_per_epoch": 2})
    before = torch.get_num_threads()
    end = train(recipe, tmp_path / "run", epochs=1, device="cpu", precision="bf16", threads=1, json_lines=False)
    assert end["status"] == "completed" and torch.get_num_threads() == before
    meta = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["weights_meta"]
    assert meta["precision"] == "bf16" and meta["tta"] == "flip"
    assert meta["training_options"]["target"] == "votes"
    assert all(torch.isfinite(p).all() for p in recipe.model.parameters())
    assert next(recipe.model.parameters()).dtype == torch.float32  # master weights stay fp32


# ---- vote targets ------------------------------------------------------------------------------
def test_votes_rule_keeps_mostly_emotional_images(ferplus_root: Path) -> None:
    assert emotional_label(np.array([0, 0, 4, 0, 0, 0, 3, 0, 3, 0])) == 2  # 7 of 10 votes are emotions
    assert emotional_label(np.array([0, 0, 0, 0, 0, 0, 0, 0, 7, 3])) is None  # mostly unknown / NF
    assert emotional_label(np.array([3, 0, 0, 0, 0, 0, 0, 0, 3, 4])) is None  # 3 of 10: not more than half
    votes_set = load_ferplus(ferplus_root / "FER2013Train", vote="votes")
    majority = load_ferplus(ferplus_root / "FER2013Train", vote="majority")
    assert len(votes_set) == 6 * 3 and len(majority) == 4 * 3  # the two ambiguous rows come back
    torch.testing.assert_close(votes_set.soft_labels.sum(1), torch.ones(len(votes_set)))


def test_vote_target_is_cross_entropy_against_the_distribution(ferplus_root: Path, tmp_path: Path) -> None:
    recipe = get_recipe("tfe-jl/resnet18-ferplus")(ferplus_root, {"batch_size": 8})
    recipe.setup(LocalContext(tmp_path))
    assert recipe.soft_train is not None and len(recipe.y_train) == 18
    assert len(recipe.y_val) == 4  # validation keeps the majority rule
    logits = torch.randn(3, 8)
    soft = recipe.soft_train[:3]
    loss, _ = recipe._loss(ModelOutput(logits=logits), recipe.y_train[:3], soft)
    expected = -(soft * F.log_softmax(logits, 1)).sum(1).mean()
    torch.testing.assert_close(loss, expected)
    hard = get_recipe("tfe-jl/resnet18-ferplus")(ferplus_root, {"batch_size": 8, "target": "majority"})
    hard.setup(LocalContext(tmp_path))
    assert hard.soft_train is None and len(hard.y_train) == 12


# ---- schedule, augmentation, EMA ----------------------------------------------------------------
def test_onecycle_warms_up_to_the_peak_then_anneals() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    sched = make_schedule(opt, "onecycle", 100, 0)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1 / 25)
    assert max(lrs) == pytest.approx(0.1, rel=1e-3) and 25 <= int(np.argmax(lrs)) <= 32
    assert lrs[-1] < 1e-4
    with pytest.raises(ValueError, match="schedule"):
        make_schedule(opt, "exponential", 100, 0)
    opt.param_groups[0]["lr"] = 0.1
    step = make_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), "step", 100, 0, step_size=10)
    lrs = []
    for _ in range(25):
        lrs.append(step.get_last_lr()[0])
        step.optimizer.step()
        step.step()
    assert lrs[9] == pytest.approx(0.1) and lrs[10] == pytest.approx(0.01) and lrs[20] == pytest.approx(0.001)


def test_scale_augmentation_zooms_about_the_centre() -> None:
    x = torch.zeros(1, 1, 49, 49)
    x[..., 24, 24] = 1.0
    x[..., 24, 34] = 1.0  # a dot 10 px right of the centre
    torch.manual_seed(0)
    out = augment_batch(x, flip=False, max_shift=0.0, max_rotation_deg=0.0, max_scale=0.3)
    assert float(out[..., 24, 24]) > 0.5  # the centre stays put
    row = out[0, 0, 24]
    right = int(torch.argmax(row[30:])) + 30
    assert right != 34  # the off-centre dot moved: the image was zoomed
    flat = torch.full((2, 1, 48, 48), 0.3)
    torch.testing.assert_close(augment_batch(flat, flip=False, max_shift=0, max_rotation_deg=0, max_scale=0.2), flat)


def test_ema_is_a_lerp_of_the_trained_weights(ferplus_root: Path, tmp_path: Path) -> None:
    recipe = get_recipe("tfe-jl/resnet18-ferplus")(ferplus_root, {"batch_size": 8, "ema": 0.9})
    ctx = LocalContext(tmp_path)
    recipe.setup(ctx)
    assert set(recipe.modules()) == {"model", "train_model"} and recipe.model is not recipe.train_model
    before = [p.detach().clone() for p in recipe.model.parameters()]
    stats_before = {k: v.clone() for k, v in recipe.model.named_buffers() if v.is_floating_point()}
    next(iter(recipe.train_epoch(ctx, 0)))
    for ema, old, new in zip(recipe.model.parameters(), before, recipe.train_model.parameters()):
        torch.testing.assert_close(ema, 0.9 * old + 0.1 * new.detach())
    # BN running statistics are averaged alike (copying the live ones mismatches the averaged weights)
    live = dict(recipe.train_model.named_buffers())
    assert stats_before and any(not torch.equal(live[k], v) for k, v in stats_before.items())
    for k, ema in recipe.model.named_buffers():
        if k in stats_before:
            torch.testing.assert_close(ema, 0.9 * stats_before[k] + 0.1 * live[k])


def test_ema_bn_statistics_are_measured_for_the_averaged_weights(ferplus_root: Path, tmp_path: Path) -> None:
    recipe = get_recipe("tfe-jl/resnet18-ferplus")(ferplus_root, {"batch_size": 8, "ema": 0.5})
    ctx = LocalContext(tmp_path)
    recipe.setup(ctx)
    for _ in range(3):
        next(iter(recipe.train_epoch(ctx, 0)))
    first_bn = next(m for m in recipe.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    first_bn.running_var.fill_(100.0)  # stale statistics that would wreck evaluation
    with torch.no_grad():  # averaged weights that differ clearly from the live ones
        next(recipe.model.parameters()).mul_(3.0)
    metrics = recipe.evaluate(ctx, 0)
    assert math.isfinite(metrics["val_loss"])
    # the stem's batch means over the settling batches (clean training images), for the EMA weights
    order = torch.randperm(len(recipe.x_train), generator=torch.Generator().manual_seed(0))
    x = recipe.inputs(recipe.x_train[order[:base.EMA_BN_BATCHES * recipe.batch_size]], augment=False)
    seen = []

    def batch_means(model: torch.nn.Module) -> torch.Tensor:
        bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        hook = bn.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].mean((0, 2, 3))))
        with torch.no_grad():
            model.train()
            for i in range(0, len(x), recipe.batch_size):
                model(x[i:i + recipe.batch_size])
        hook.remove()
        out = torch.stack(seen).mean(0)
        seen.clear()
        return out

    ema_copy, live_copy = copy.deepcopy(recipe.model), copy.deepcopy(recipe.train_model)
    torch.testing.assert_close(first_bn.running_mean, batch_means(ema_copy), atol=1e-4, rtol=1e-3)
    assert not torch.allclose(first_bn.running_mean, batch_means(live_copy), atol=1e-4)


# ---- TTA -------------------------------------------------------------------------------------
def test_flip_tta_averages_the_probabilities_of_both_views() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))

    class Wrap(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> ModelOutput:
            return ModelOutput(logits=model(x))

    images = torch.randint(0, 255, (5, 1, 4, 4), dtype=torch.uint8)
    to_input = lambda x: x.float() / 255  # noqa: E731
    probs = class_probabilities(Wrap(), images, to_input, tta="flip", batch_size=2)
    plain = F.softmax(model(to_input(images)), 1)
    mirrored = F.softmax(model(to_input(images.flip(-1))), 1)
    torch.testing.assert_close(probs, 0.5 * (plain + mirrored))
    both = ModelOutput(logits=model(to_input(torch.cat([images, images.flip(-1)]))))
    torch.testing.assert_close(merge_flip_outputs(both, 5).probabilities, 0.5 * (plain + mirrored))



def test_validation_metrics_score_the_flip_mean_and_keep_the_plain_pass() -> None:
    """Faces whose mirror reads otherwise: TTA and no-TTA accuracy differ exactly as computed by hand."""
    images = torch.zeros(4, 1, 2, 2)
    images[:2, :, :, 0] = 1.0  # left column bright
    images[2:, :, :, 1] = 1.0  # right column bright
    calls = []

    def predict(x: torch.Tensor) -> torch.Tensor:  # left bright (0.9, 0.1, 0), else (0.3, 0.6, 0.1)
        calls.append(x)
        left = x[:, 0, :, 0].mean(1)
        return torch.stack([0.3 + 0.6 * left, 0.6 - 0.5 * left, 0.1 - 0.1 * left], 1)

    labels = torch.tensor([0, 0, 1, 1])
    m = validation_metrics(predict, images, labels, "flip")
    # every flip mean is (0.6, 0.35, 0.05): class 0; the plain pass is right on all four
    assert m["val_accuracy"] == 0.5 and m["val_accuracy_no_tta"] == 1.0 and len(calls) == 2
    assert m["val_loss"] == pytest.approx(-(2 * math.log(0.6) + 2 * math.log(0.35)) / 4, rel=1e-5)
    plain = validation_metrics(predict, images, labels, "none")
    assert set(plain) == {"val_accuracy", "val_loss"} and plain["val_accuracy"] == 1.0 and len(calls) == 3
    with pytest.raises(Exception, match="tta"):
        validation_metrics(predict, images, labels, "rotate")

def test_predictor_tta_defaults_to_the_card_and_can_be_switched_off() -> None:
    crops = torch.randint(0, 255, (3, 1, 48, 48), dtype=torch.uint8)
    off = Predictor("resnet18-ferplus", device="cpu", tta="none")
    flip = Predictor("resnet18-ferplus", device="cpu", tta="flip")
    assert Predictor("resnet18-ferplus", device="cpu").tta == off.weights.tta
    expected = 0.5 * (off.predict_tensor(crops).probabilities + off.predict_tensor(crops.flip(-1)).probabilities)
    torch.testing.assert_close(flip.predict_tensor(crops).probabilities, expected, atol=1e-5, rtol=1e-4)


# ---- Softmax-MSE with label smoothing ------------------------------------------------------------
def test_softmax_mse_gradient_is_the_smoothed_cross_entropy_gradient() -> None:
    logits = torch.randn(6, 7, requires_grad=True)
    labels = torch.randint(0, 7, (6,))
    softmax_mse(logits, labels, 0.1).backward()
    ref = logits.detach().clone().requires_grad_(True)
    F.cross_entropy(ref, labels, label_smoothing=0.1).backward()
    torch.testing.assert_close(logits.grad, ref.grad)
    value = softmax_mse(logits.detach(), labels, 0.1)  # eq. 3's value does not change
    torch.testing.assert_close(value, softmax_mse(logits.detach(), labels))


# ---- ferkit eval on FER2013 ------------------------------------------------------------------------
def test_eval_reads_fer2013_usage_and_maps_shared_classes(tmp_path: Path) -> None:
    from ferkit.evaluation.evaluate import evaluate

    root = tmp_path / "ferplus"
    make_fer2013_emotion_tree(root, n_train=7, n_valid=7, ambiguous=())
    # an 8-class FER+ model on FER2013's 7 classes: every class is shared
    res = evaluate("resnet18-ferplus", root, split="PublicTest", device="cpu", tta="none")
    assert res["n"] == 7 and res["layout"] == "fer2013" and res["split"] == "PublicTest"
    assert res["excluded"] == {} and res["tta"] == "none"
    # a 7-class FER2013 model on FER+ (8 classes): contempt images are left out and counted
    valid = tmp_path / "fp" / "FER2013Valid"
    make_ferplus_tree(valid, votes=[[10] + [0] * 9, [0] * 7 + [10, 0, 0], [0, 10] + [0] * 8])
    res = evaluate("netb-dal-mse", valid, device="cpu")
    assert res["n"] == 2 and res["excluded"] == {"contempt": 1}
    # FER2013's card says "happy" / "angry"; the result speaks every command's spelling
    assert res["classes"] == ["anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"]
    from ferkit.data.errors import DataError

    with pytest.raises(DataError, match="FER2013"):
        evaluate("resnet18-ferplus", valid, split="PublicTest", device="cpu")


# ---- real data ---------------------------------------------------------------------------------
def test_bf16_and_fp32_evaluation_agree_on_real_faces(shared_data: Path) -> None:
    """A bf16-trained model evaluated in fp32 and under bf16 autocast: within 0.3 points."""
    from ferkit.inference import to_model_input
    from ferkit.models.weights import load_weights

    data = load_ferplus(shared_data / "ferplus" / "FER2013Valid", vote="majority").subset(torch.arange(1000))
    loaded = load_weights("tfe-jl", device="cpu")
    assert loaded.weights.precision == "bf16"
    x = to_model_input(data.images, loaded.weights.preprocessing)
    with torch.no_grad():
        fp32 = loaded.model(x).logits.argmax(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = loaded.model(x).logits.float().argmax(1)
    acc32 = float((fp32 == data.labels).float().mean())
    acc16 = float((bf16 == data.labels).float().mean())
    assert abs(acc32 - acc16) <= 0.003, (acc32, acc16)


def test_a_replayed_epoch_holds_the_final_lr_instead_of_failing() -> None:
    """After a mid-epoch checkpoint the epoch restarts from its first batch: more steps than planned."""
    from types import SimpleNamespace

    from ferkit.recipes.base import ClassifierRecipe

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    holder = SimpleNamespace(scheduler=make_schedule(opt, "onecycle", total_steps=5, warmup_steps=0))
    for _ in range(holder.scheduler.total_steps):  # the planned steps (5, plus the one after the last)
        ClassifierRecipe._step_schedule(holder)
    final = opt.param_groups[0]["lr"]
    for _ in range(3):  # a plain scheduler.step() raises here ("Tried to step 7 times")
        ClassifierRecipe._step_schedule(holder)
    assert opt.param_groups[0]["lr"] == final
    with pytest.raises(ValueError):
        holder.scheduler.step()
