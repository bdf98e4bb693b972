"""The identity ensemble: its feature's cosine is the members' mean cosine; export, card and refusals."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ferkit.cli import main
from ferkit.models import create_model
from ferkit.models.weights import get_weights, load_weights
from ferkit.recipes.registry import get_recipe
from ferkit.training.engine import train
from ferkit.training.export import export_ensemble
from tests.fixtures.datasets import make_identity_tree

MEMBERS = [{"architecture": "deepid", "model_cfg": {"num_classes": 5}}] * 3


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a, b, dim=1)


def test_feature_cosine_is_the_mean_of_member_cosines() -> None:
    torch.manual_seed(0)
    model = create_model("identity_ensemble", members=MEMBERS).eval()
    a, b = torch.randn(4, 1, 48, 48), torch.randn(4, 1, 48, 48)
    with torch.no_grad():
        out_a, out_b = model(a), model(b)
        members_a = [net(a) for net in model.members]
        members_b = [net(b) for net in model.members]
    # unit norm, 3 x 160 wide, cosine = mean of the three members' cosines (equal votes)
    assert out_a.identity.shape == (4, 3 * 160)
    assert torch.allclose(out_a.identity.norm(dim=1), torch.ones(4), atol=1e-5)
    want = torch.stack([_cos(ma.identity, mb.identity) for ma, mb in zip(members_a, members_b)]).mean(0)
    assert torch.allclose(_cos(out_a.identity, out_b.identity), want, atol=1e-5)
    # logits: the mean of the members' identity logits
    assert torch.allclose(out_a.logits, torch.stack([m.logits for m in members_a]).mean(0), atol=1e-5)


def test_member_lists_that_cannot_combine_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 2 members"):
        create_model("identity_ensemble", members=MEMBERS[:1])
    with pytest.raises(ValueError, match="different identity sets"):
        create_model("identity_ensemble", members=[MEMBERS[0], {"architecture": "deepid",
                                                                "model_cfg": {"num_classes": 7}}])
    with pytest.raises(ValueError, match="no identity feature"):
        create_model("identity_ensemble", members=[MEMBERS[0], {"architecture": "resnet18_fer",
                                                                "model_cfg": {"num_classes": 5}}])


def _train_member(root: Path, out: Path, seed: int, holdout: int = 2) -> Path:
    recipe = get_recipe("tfe-jl/deepid-identity")(root, {"batch_size": 8, "holdout_identities": holdout,
                                                          "schedule_epochs": 1})
    train(recipe, out, epochs=1, device="cpu", seed=seed, json_lines=False)
    return out / "checkpoint.pt"


@pytest.fixture(scope="module")
def two_members(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("ensemble")
    root = tmp / "celeba_subset"
    make_identity_tree(root, identities=[f"{i:04d}" for i in range(1, 7)], per_identity=4, size=128)
    return root, _train_member(root, tmp / "seed0", 0), _train_member(root, tmp / "seed1", 1)


def test_export_writes_a_loadable_ensemble_whose_feature_matches_its_members(two_members, tmp_path: Path) -> None:
    _, first, second = two_members
    info = export_ensemble([first, second], "id-ens", out_dir=tmp_path, metrics={"fixture_accuracy": 0.5})
    assert info["max_logit_diff"] < 1e-2
    card = get_weights(tmp_path / "id-ens.json")
    members = [get_weights(first), get_weights(second)]
    assert card.architecture == "identity_ensemble" and len(card.model_cfg["members"]) == 2
    assert card.classes == members[0].classes and card.preprocessing == members[0].preprocessing
    # the members' own validation numbers are not the ensemble's; no threshold until calibrated
    assert card.metrics == {"fixture_accuracy": 0.5} and not card.identity_calibrated
    # same split seed: both members held out the same identities, so the ensemble did too
    assert card.heldout_identities and card.heldout_identities == members[0].heldout_identities
    assert [m["seed"] for m in card.training_options["members"]] == [0, 1]
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        got = load_weights(tmp_path / "id-ens.json", "cpu").model(x).identity
        feats = [F.normalize(load_weights(p, "cpu").model(x).identity, dim=1) for p in (first, second)]
    assert torch.allclose(got, torch.cat(feats, 1) / 2 ** 0.5, atol=2e-2)


def test_members_trained_on_other_identities_are_refused(two_members, tmp_path: Path) -> None:
    root, first, _ = two_members
    other = _train_member(root, tmp_path / "other", 0, holdout=3)  # 3 held out: other faces, other classes
    with pytest.raises(ValueError, match="(preprocessing|classes) differs"):
        export_ensemble([first, other], "bad", out_dir=tmp_path)
    with pytest.raises(ValueError, match="at least 2"):
        export_ensemble([first], "bad", out_dir=tmp_path)


def test_cli_needs_ensemble_flag_for_several_checkpoints(two_members, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    _, first, second = two_members
    rc = main(["export-weights", "--checkpoint", str(first), str(second), "--name", "x", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "--ensemble" in err and len(err.strip().splitlines()) == 1
    rc = main(["export-weights", "--ensemble", "--checkpoint", str(first), str(second), "--name", "x",
               "--out", str(tmp_path)])
    assert rc == 0 and get_weights(tmp_path / "x.json").architecture == "identity_ensemble"
