"""Net B recipes on tiny fixtures in the datasets' real layouts: identity pretraining, transfer, ablations."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ferkit.data.identity import load_identity_training_data
from ferkit.losses.softmax_mse import SoftmaxMSE
from ferkit.models.outputs import ModelOutput
from ferkit.recipes.netb import LightCNNIdentity, NetBFer2013, NetBFerPlus
from ferkit.recipes.registry import get_recipe
from tests.fixtures.datasets import (make_fer2013_emotion_tree, make_ferplus_tree, make_identity_tree,
                                     make_orl_tree)
from tests.fixtures.train_context import LocalContext

SMALL = {"input_size": 32, "width": 0.25, "batch_size": 8}


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERKIT_CACHE", "off")


@pytest.fixture()
def identity_root(tmp_path: Path) -> Path:
    root = tmp_path / "identity"
    make_identity_tree(root / "celeba_subset", identities=("0001", "0002", "0010", "0011"), per_identity=4)
    make_orl_tree(root / "orl_faces", subjects=2, per_subject=4)
    return root


def _identity_checkpoint(tmp_path: Path, identity_root: Path) -> tuple[Path, LightCNNIdentity]:
    recipe = LightCNNIdentity(identity_root, {**SMALL, "holdout_identities": 1, "max_steps_per_epoch": 2})
    ctx = LocalContext(tmp_path)
    recipe.setup(ctx)
    list(recipe.train_epoch(ctx, 0))
    path = tmp_path / "identity.pt"
    # the engine's checkpoint layout: the model under modules/model, its card under weights_meta
    torch.save({"modules": {"model": recipe.model.state_dict()}, "weights_meta": recipe.weights_meta()}, path)
    return path, recipe


def test_recipes_registered() -> None:
    for name in ("netb/lightcnn-identity", "netb/fer2013", "netb/ferplus"):
        assert get_recipe(name).name == name


def test_identity_data_holds_out_identities(identity_root: Path) -> None:
    data, names, held_out = load_identity_training_data(identity_root, "celeba_subset,orl_faces", 32, holdout=1)
    assert held_out == ["celeba_subset/0011"]
    assert names == ["celeba_subset/0001", "celeba_subset/0002", "celeba_subset/0010", "orl_faces/s1", "orl_faces/s2"]
    assert len(data) == 3 * 4 + 2 * 4 and data.images.shape[1:] == (1, 32, 32)
    assert sorted(torch.unique(data.labels).tolist()) == list(range(5))


def test_identity_pretraining_steps_and_meta(tmp_path: Path, identity_root: Path) -> None:
    recipe = LightCNNIdentity(identity_root, {**SMALL, "holdout_identities": 1, "val_every": 2})
    ctx = LocalContext(tmp_path)
    recipe.setup(ctx)
    assert recipe.x_val.shape[0] == 5 * 2  # images 2 and 4 of each of the 5 training identities
    results = list(recipe.train_epoch(ctx, 0))
    assert results and all(torch.isfinite(torch.tensor(r.loss)) for r in results)
    metrics = recipe.evaluate(ctx, 0)
    assert 0.0 <= metrics["val_accuracy"] <= 1.0 and "val_softmax_mse" not in metrics
    meta = recipe.weights_meta()
    assert meta["architecture"] == "lightcnn9" and meta["model_cfg"]["num_classes"] == 5
    assert meta["heldout_identities"] == ["celeba_subset/0011"]


def _loss(recipe: Any, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return recipe._loss(ModelOutput(logits=logits), y)[0]


def _loss_drops_on_fixed_batch(recipe: Any) -> None:
    """Repeated steps on one fixed batch (no dropout, no augmentation) must lower the recipe's loss."""
    recipe.model.eval()  # dropout off: the batch and the function are then fixed
    x = recipe.inputs(recipe.x_train[:8], augment=False)
    y = recipe.y_train[:8]
    opt = torch.optim.SGD(recipe.model.parameters(), lr=0.01, momentum=0.9)
    first = None
    for _ in range(15):
        loss = _loss(recipe, recipe.model(x).logits, y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert _loss(recipe, recipe.model(x).logits, y).item() < first


def test_identity_loss_goes_down(tmp_path: Path, identity_root: Path) -> None:
    recipe = LightCNNIdentity(identity_root, {**SMALL, "holdout_identities": 1})
    recipe.setup(LocalContext(tmp_path))
    _loss_drops_on_fixed_batch(recipe)


@pytest.mark.parametrize("head,loss", [("fc", "softmax"), ("dal", "softmax"), ("dal", "softmax-mse")])
def test_fer2013_ablations_transfer_and_train(tmp_path: Path, identity_root: Path, head: str, loss: str) -> None:
    ckpt, identity = _identity_checkpoint(tmp_path, identity_root)
    fer = tmp_path / "ferplus"
    make_fer2013_emotion_tree(fer, n_train=12, n_valid=5, ambiguous=())
    recipe = NetBFer2013(fer, {"identity_checkpoint": str(ckpt), "head": head, "loss": loss, "lr": 0.01,
                               "batch_size": 4, "max_steps_per_epoch": 3})
    ctx = LocalContext(tmp_path)
    recipe.setup(ctx)
    # input size and width come from the identity checkpoint
    assert recipe.model.input_size == 32 and recipe.model.width == 0.25
    # the transfer really loaded the identity weights: trunk identical, fc1 (or the DAL pair) from fc1
    id_state = identity.model.state_dict()
    for name, tensor in id_state.items():
        if name.startswith("features."):
            assert torch.equal(recipe.model.state_dict()[name], tensor), name
    if head == "dal":
        torch.testing.assert_close(recipe.model.dal.ip1_b.weight, id_state["fc1.fc.weight"][256:])
    else:
        torch.testing.assert_close(recipe.model.fc1.fc.weight, id_state["fc1.fc.weight"])
    if loss == "softmax-mse":
        assert isinstance(recipe._softmax_mse, SoftmaxMSE)
    results = list(recipe.train_epoch(ctx, 0))
    assert len(results) == 3
    metrics = recipe.evaluate(ctx, 0)
    assert set(metrics) == ({"val_accuracy", "val_loss", "val_accuracy_no_tta"}
                            | ({"val_softmax_mse"} if loss == "softmax-mse" else set()))
    assert recipe.x_val.shape[0] == 5
    meta = recipe.weights_meta()
    assert meta["model_cfg"]["head"] == head and meta["classes"][0] == "angry"
    assert meta["name"] == ("netb-dal-mse" if (head, loss) == ("dal", "softmax-mse") else f"netb-{head}-{loss}")
    _loss_drops_on_fixed_batch(recipe)


def test_softmax_mse_recipe_reports_eq3_value(tmp_path: Path) -> None:
    fer = tmp_path / "ferplus"
    make_fer2013_emotion_tree(fer, n_train=8, n_valid=3, ambiguous=())
    recipe = NetBFer2013(fer, {**SMALL, "head": "dal", "loss": "softmax-mse"})
    recipe.setup(LocalContext(tmp_path))
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    # uniform p over 7 classes -> y_hat = 3; label 0 -> (3 - 0)^2 = 9
    assert _loss(recipe, logits, torch.tensor([0])).item() == pytest.approx(9.0)


def test_transfer_rejects_other_shapes(tmp_path: Path, identity_root: Path) -> None:
    ckpt, _ = _identity_checkpoint(tmp_path, identity_root)
    fer = tmp_path / "ferplus"
    make_fer2013_emotion_tree(fer, n_train=4, n_valid=2, ambiguous=())
    recipe = NetBFer2013(fer, {"identity_checkpoint": str(ckpt), "input_size": 48})
    with pytest.raises(ValueError, match="input-size"):
        recipe.setup(LocalContext(tmp_path))


def test_ferplus_recipe_runs(tmp_path: Path) -> None:
    fer = tmp_path / "ferplus"
    make_ferplus_tree(fer / "FER2013Train", n=12)
    make_ferplus_tree(fer / "FER2013Valid", n=12)
    NetBFerPlus.validate_data(fer)
    recipe = NetBFerPlus(fer, {**SMALL, "head": "dal", "loss": "softmax-mse", "lr": 0.01, "max_steps_per_epoch": 2})
    ctx = LocalContext(tmp_path)
    recipe.setup(ctx)
    assert recipe.model.num_classes == 8 and recipe.classes[0] == "neutral"
    assert len(list(recipe.train_epoch(ctx, 0))) >= 1
    assert 0.0 <= recipe.evaluate(ctx, 0)["val_accuracy"] <= 1.0


def test_through_the_engine_then_load(tmp_path: Path, identity_root: Path) -> None:
    from ferkit.models.weights import load_weights
    from ferkit.training.engine import train

    id_out = tmp_path / "id"
    train(LightCNNIdentity(identity_root, {**SMALL, "holdout_identities": 1, "max_steps_per_epoch": 2}), id_out, epochs=1,
          device="cpu", json_lines=False)
    fer = tmp_path / "ferplus"
    make_fer2013_emotion_tree(fer, n_train=12, n_valid=4, ambiguous=())
    out = tmp_path / "fer"
    end = train(NetBFer2013(fer, {"identity_checkpoint": str(id_out / "checkpoint.pt"), "batch_size": 4,
                                  "max_steps_per_epoch": 2}), out, epochs=1, device="cpu", json_lines=False)
    assert end["status"] == "completed"
    loaded = load_weights(out / "checkpoint.pt", device="cpu")
    assert loaded.weights.architecture == "netb" and loaded.weights.name == "netb-dal-mse"
    x = torch.zeros(2, 1, 32, 32)
    assert loaded.model(x).logits.shape == (2, 7)
