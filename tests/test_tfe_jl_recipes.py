"""TFE-JL recipes on tiny fixture trees in the datasets' real layouts, on CPU."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

from ferkit.models import create_model
from ferkit.models.weights import Preprocessing, Weights, get_weights
from ferkit.training.engine import train
from ferkit.recipes.registry import get_recipe
from tests.fixtures.datasets import (FERPLUS_CLASSES, make_ckplus48_tree, make_ferplus_tree, make_identity_tree,
                                     make_orl_tree)
from tests.fixtures.train_context import LocalContext

# every row below passes the majority rule (labels 0, 1, 2, 3, 7 ...), so all images are kept
_VOTES = [[10, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 8, 2, 0, 0, 0, 0, 0, 0, 0], [0, 0, 9, 0, 0, 0, 1, 0, 0, 0],
          [0, 0, 0, 7, 3, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 6, 4, 0], [0, 0, 0, 0, 8, 0, 0, 0, 0, 2]]


@pytest.fixture()
def ferplus_root(tmp_path: Path) -> Path:
    root = tmp_path / "ferplus"
    make_ferplus_tree(root / "FER2013Train", votes=_VOTES * 4)
    make_ferplus_tree(root / "FER2013Valid", votes=_VOTES, start=1000)
    return root


@pytest.fixture()
def identity_root(tmp_path: Path) -> tuple[Path, Path]:
    celeb = tmp_path / "celeba_subset"
    make_identity_tree(celeb, identities=[f"{i:04d}" for i in range(1, 7)], per_identity=4, size=128)
    orl = tmp_path / "orl_faces"
    make_orl_tree(orl, subjects=2, per_subject=4)
    return celeb, orl


def _fixed_batch_loss_drops(recipe: Any, ctx: LocalContext, steps: int = 10) -> tuple[float, float]:
    recipe.setup(ctx)
    x = recipe.inputs(recipe.x_train[:8], augment=False)
    y = recipe.y_train[:8]
    recipe.model.train()
    first = last = None
    for _ in range(steps):
        loss, _ = recipe._loss(recipe.model(x), y)
        ctx.step(loss, recipe.optimizer)
        value = float(loss.detach())
        first = value if first is None else first
        last = value
    return first, last


def test_resnet18_ferplus_runs_on_engine_and_writes_loadable_checkpoint(ferplus_root: Path, tmp_path: Path) -> None:
    cls = get_recipe("tfe-jl/resnet18-ferplus")
    recipe = cls(ferplus_root, {"batch_size": 8, "schedule_epochs": 2, "max_steps_per_epoch": 2})
    end = train(recipe, tmp_path / "run", epochs=2, device="cpu", json_lines=False)
    assert end["status"] == "completed" and end["epoch"] == 2
    # 24 images / batch 8 = 3 batches, capped at 2 steps per epoch by --max-steps-per-epoch
    assert len(recipe.train_set) == 24 and recipe.steps_per_epoch == 2 and end["global_step"] == 4
    assert 0.0 <= end["metrics"]["val_accuracy"] <= 1.0
    weights = get_weights(tmp_path / "run" / "checkpoint.pt")
    assert weights.architecture == "resnet18_fer" and weights.classes[0] == "neutral"
    assert weights.preprocessing.grayscale and weights.preprocessing.input_size == 48
    # normalisation measured on the training images
    imgs = recipe.train_set.images.float() / 255
    assert weights.preprocessing.mean == pytest.approx(float(imgs.mean()), abs=1e-4)
    model = weights.build_model()
    model.load_state_dict(weights.state_dict())
    # one-cycle schedule completed: the LR ends at peak / 25 / 1e4
    assert recipe.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 / 25 / 1e4, rel=1e-3)


def test_resnet18_ferplus_loss_drops_on_fixed_batch(ferplus_root: Path, tmp_path: Path) -> None:
    recipe = get_recipe("tfe-jl/resnet18-ferplus")(ferplus_root, {"batch_size": 8, "lr": 0.05, "target": "majority",
                                                                  "label_smoothing": 0.0})
    first, last = _fixed_batch_loss_drops(recipe, LocalContext(tmp_path), steps=15)
    assert last < 0.5 * first
    assert recipe.channels_last  # CPU default
    assert recipe.optimizer.param_groups[0]["momentum"] == 0.9


def test_deepid_identity_recipe_trains_holds_out_identities(identity_root: tuple[Path, Path], tmp_path: Path) -> None:
    celeb, orl = identity_root
    cls = get_recipe("tfe-jl/deepid-identity")
    recipe = cls(celeb, {"batch_size": 8, "extra_identity": [str(orl)], "holdout_identities": 2,
                         "schedule_epochs": 1})
    end = train(recipe, tmp_path / "id", epochs=1, device="cpu", json_lines=False)
    assert end["status"] == "completed"
    # 6 CelebA ids - 2 held out + 2 ORL ids; one image per identity kept for validation
    assert len(recipe.classes) == 6
    assert len(recipe.val_set) == 6 and len(recipe.train_set) == 4 * 3 + 2 * 3
    assert len(recipe.heldout_names) == 2 and not set(recipe.heldout_names) & set(recipe.classes)
    assert "val_verification_accuracy" in end["metrics"]
    weights = get_weights(tmp_path / "id" / "checkpoint.pt")
    assert weights.architecture == "deepid" and weights.model_cfg == {"num_classes": 6}
    for name in recipe.heldout_names:
        assert name in weights.notes


def test_deepid_loss_drops_on_fixed_batch(identity_root: tuple[Path, Path], tmp_path: Path) -> None:
    celeb, _ = identity_root
    recipe = get_recipe("tfe-jl/deepid-identity")(celeb, {"batch_size": 8, "holdout_identities": 1, "lr": 0.05})
    first, last = _fixed_batch_loss_drops(recipe, LocalContext(tmp_path), steps=25)
    assert last < first
    assert recipe.verif_margin > 0


def _write_card(folder: Path, name: str, architecture: str, model: nn.Module, classes: list[str],
                mean: float = 0.5, std: float = 0.25) -> Path:
    """A weights entry (card + state dict) as stage 1 / stage 2 would leave after export."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / f"{name}.pt")
    Weights(name=name, architecture=architecture, classes=classes,
            preprocessing=Preprocessing(mean=mean, std=std), model_cfg={"num_classes": len(classes)},
            file=f"{name}.pt").save_card(folder / f"{name}.json")
    return folder / f"{name}.json"


def test_joint_ferplus_loads_both_pretrained_branches(ferplus_root: Path, tmp_path: Path) -> None:
    deepid = create_model("deepid", num_classes=5)
    resnet = create_model("resnet18_fer", num_classes=8)
    id_card = _write_card(tmp_path / "w", "stage1", "deepid", deepid, [f"id{i}" for i in range(5)])
    emo_card = _write_card(tmp_path / "w", "stage2", "resnet18_fer", resnet, FERPLUS_CLASSES, mean=0.51, std=0.26)
    options = {"batch_size": 8, "lr": 0.05, "identity_checkpoint": str(id_card), "emotion_checkpoint": str(emo_card)}
    recipe = get_recipe("tfe-jl/joint-ferplus")(ferplus_root, options)
    first, last = _fixed_batch_loss_drops(recipe, LocalContext(tmp_path), steps=8)
    assert last < first
    # setup loaded both branches (compare with the pretrained modules, not with the trained joint model)
    fresh = get_recipe("tfe-jl/joint-ferplus")(ferplus_root, options)
    fresh.setup(LocalContext(tmp_path))
    joint = fresh.model
    for k, v in joint.identity_net.state_dict().items():
        torch.testing.assert_close(v, deepid.state_dict()[k])
    for k, v in joint.emotion_net.state_dict().items():
        torch.testing.assert_close(v, resnet.state_dict()[k])
    # the ResNet branch keeps the input normalisation it was trained with
    assert (fresh.preprocessing.mean, fresh.preprocessing.std) == (0.51, 0.26)
    meta = fresh.weights_meta()
    assert meta["architecture"] == "tfe_jl" and meta["name"] == "tfe-jl" and meta["model_cfg"]["emotion_depth"] == 18
    assert fresh.optimizer.param_groups[0]["lr"] > 0
    # a ResNet given as the identity branch is refused with a clear message
    bad = get_recipe("tfe-jl/joint-ferplus")(ferplus_root, {**options, "identity_checkpoint": str(emo_card)})
    with pytest.raises(ValueError, match="deepid"):
        bad.setup(LocalContext(tmp_path))


def test_resnet12_ckplus_holds_out_a_subject_independent_fold(tmp_path: Path) -> None:
    make_ckplus48_tree(tmp_path / "ck", sequences=[("S010", 1, "anger"), ("S011", 2, "happy"), ("S012", 3, "anger"),
                                                   ("S013", 1, "surprise"), ("S014", 5, "happy")])
    cls = get_recipe("tfe-jl/resnet12-ckplus")
    assert cls.supports_folds
    from ferkit.evaluation.kfold import subject_kfold

    full = cls.load_dataset(tmp_path / "ck")
    for fold in range(3):
        recipe = cls(tmp_path / "ck", {"folds": 3, "fold": fold, "split_seed": 7, "batch_size": 4, "lr": 0.05})
        if fold == 0:  # train only one fold (CPU time); the split is checked for all
            first, last = _fixed_batch_loss_drops(recipe, LocalContext(tmp_path), steps=10)
            assert last < first
            assert recipe.weights_meta()["architecture"] == "resnet12_fer"
            train_set, val_set = recipe.train_set, recipe.val_set
        else:
            train_set, val_set = recipe._load_split()
        train_idx, test_idx = subject_kfold(full.subjects, 3, 7)[fold]
        assert val_set.paths == [full.paths[i] for i in test_idx]
        assert train_set.paths == [full.paths[i] for i in train_idx]
        assert not set(train_set.subjects.tolist()) & set(val_set.subjects.tolist())
    with pytest.raises(ValueError, match="fold"):
        cls(tmp_path / "ck", {"folds": 3, "fold": 3}).setup(LocalContext(tmp_path))


def test_init_checkpoint_starts_from_given_weights_and_checks_architecture(ferplus_root: Path, tmp_path: Path) -> None:
    resnet = create_model("resnet18_fer", num_classes=8)
    card = _write_card(tmp_path / "w", "warm", "resnet18_fer", resnet, FERPLUS_CLASSES)
    recipe = get_recipe("tfe-jl/resnet18-ferplus")(ferplus_root, {"init_checkpoint": str(card), "batch_size": 8})
    recipe.setup(LocalContext(tmp_path))
    for k, v in recipe.model.state_dict().items():
        torch.testing.assert_close(v, resnet.state_dict()[k])
    wrong = _write_card(tmp_path / "w", "id", "deepid", create_model("deepid", num_classes=3), ["a", "b", "c"])
    with pytest.raises(ValueError, match="resnet18_fer"):
        get_recipe("tfe-jl/resnet18-ferplus")(ferplus_root, {"init_checkpoint": str(wrong)}).setup(LocalContext(tmp_path))


def test_resnet12_ckplus_init_warm_starts_from_a_ferplus_stage1(ferplus_root: Path, tmp_path: Path) -> None:
    """`--init` copies every matching tensor of an 8-class FER+ ResNet12 into the 7-class CK+ net; the
    classifier stays random; another architecture is refused."""
    assert get_recipe("tfe-jl/resnet12-ferplus-stage1").architecture == "resnet12_fer"
    stage1 = create_model("resnet12_fer", num_classes=8)
    card = _write_card(tmp_path / "w", "s1", "resnet12_fer", stage1, FERPLUS_CLASSES)
    make_ckplus48_tree(tmp_path / "ck", sequences=[("S010", 1, "anger"), ("S011", 2, "happy"), ("S012", 3, "anger")])
    cls = get_recipe("tfe-jl/resnet12-ckplus")
    recipe = cls(tmp_path / "ck", {"folds": 3, "fold": 0, "batch_size": 4, "init": str(card)})
    recipe.setup(LocalContext(tmp_path))
    own, start = recipe.model.state_dict(), stage1.state_dict()
    for k in own:
        if not k.startswith("fc."):
            torch.testing.assert_close(own[k], start[k])
    assert own["fc.weight"].shape[0] == len(recipe.classes) != 8
    assert "init from" in recipe.weights_meta()["notes"]
    wrong = _write_card(tmp_path / "w", "r18", "resnet18_fer", create_model("resnet18_fer", num_classes=8),
                        FERPLUS_CLASSES)
    with pytest.raises(ValueError, match="resnet12_fer"):
        cls(tmp_path / "ck", {"folds": 3, "fold": 0, "init": str(wrong)}).setup(LocalContext(tmp_path))
