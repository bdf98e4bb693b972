"""CosFace / ArcFace heads against their equations on a hand-computed example, and the identity
recipes' --margin-loss / heavier-augmentation options on tiny fixtures in the real layouts."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ferkit.losses.margin import MarginHead, margin_logits
from ferkit.data.augment import photometric_jitter, random_downsample, random_resized_crop
from ferkit.recipes.netb import LightCNNIdentity
from ferkit.recipes.registry import get_recipe
from tests.fixtures.datasets import make_identity_tree, make_orl_tree, make_yale_tree
from tests.fixtures.train_context import LocalContext

SMALL = {"input_size": 32, "width": 0.25, "batch_size": 8}

# two samples, three classes; cosines chosen so the angles are round numbers
COS = torch.tensor([[0.8, 0.6, -0.2], [0.1, 0.5, -0.99]])
LABELS = torch.tensor([0, 2])


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERKIT_CACHE", "off")


def test_cosface_logits_match_the_equation() -> None:
    s, m = 30.0, 0.35
    out = margin_logits(COS, LABELS, "cosface", s, m)
    # target: s (cos - m); others: s cos
    expected = torch.tensor([[30 * (0.8 - 0.35), 30 * 0.6, 30 * -0.2],
                             [30 * 0.1, 30 * 0.5, 30 * (-0.99 - 0.35)]])
    assert torch.allclose(out, expected, atol=1e-5)


def test_arcface_logits_match_the_equation_and_fall_back_past_pi() -> None:
    s, m = 30.0, 0.5
    out = margin_logits(COS, LABELS, "arcface", s, m)
    # sample 0: theta = acos(0.8) = 0.6435 rad; cos(theta + 0.5) by hand:
    # 0.8 cos 0.5 - 0.6 sin 0.5 = 0.8 * 0.87758 - 0.6 * 0.47943 = 0.70207 - 0.28766 = 0.41441
    assert out[0, 0].item() == pytest.approx(30 * 0.41441, abs=1e-3)
    assert out[0, 0].item() == pytest.approx(30 * math.cos(math.acos(0.8) + 0.5), abs=1e-4)
    assert out[0, 1].item() == pytest.approx(30 * 0.6) and out[0, 2].item() == pytest.approx(30 * -0.2)
    # sample 1: theta = acos(-0.99) = 3.0 rad > pi - m, where cos(theta + m) would rise again:
    # the reference fallback s (cos - m sin m)
    assert out[1, 2].item() == pytest.approx(30 * (-0.99 - 0.5 * math.sin(0.5)), abs=1e-4)
    assert out[1, 0].item() == pytest.approx(3.0) and out[1, 1].item() == pytest.approx(15.0)


def test_margin_head_cosines_loss_and_gradient() -> None:
    torch.manual_seed(0)
    head = MarginHead(4, 3, "cosface")
    assert (head.scale, head.margin) == (30.0, 0.35)
    assert MarginHead(4, 3, "arcface").margin == 0.5
    x = torch.randn(5, 4, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0, 1])
    cos = head.cosine(x)
    manual = F.normalize(x, dim=1) @ F.normalize(head.weight, dim=1).T
    assert torch.allclose(cos, manual, atol=1e-6)
    assert torch.allclose(head.logits(x), 30 * manual, atol=1e-5)
    # the margin makes the target harder than the plain scaled-cosine softmax
    plain = F.cross_entropy(head.logits(x), y)
    loss = head.loss(x, y)
    assert loss.item() > plain.item()
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and head.weight.grad.abs().sum() > 0
    head.margin_scale = 0.0  # warm-up start: no margin
    assert torch.allclose(head(x, y), head.logits(x), atol=1e-5)


def test_bad_margin_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="margin"):
        MarginHead(4, 3, "cosface", margin=1.5)
    with pytest.raises(ValueError, match="cosface or arcface"):
        MarginHead(4, 3, "sphereface")
    with pytest.raises(ValueError, match="\\[B, C\\]"):
        margin_logits(COS, torch.tensor([0]), "cosface", 30.0, 0.35)


def test_augmentations_stay_in_range_and_change_images() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 32, 32, generator=g)
    for out in (random_resized_crop(x, 0.5, g), photometric_jitter(x, 0.4, g), random_downsample(x, 1.0, 0.4, g)):
        assert out.shape == x.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert not torch.allclose(out, x)
    assert torch.equal(random_resized_crop(x, 1.0, g), x) or torch.allclose(random_resized_crop(x, 1.0, g), x, atol=1e-5)
    assert torch.equal(random_downsample(x, 0.0, 0.4, g), x)


@pytest.fixture()
def identity_root(tmp_path: Path) -> Path:
    root = tmp_path / "identity"
    make_identity_tree(root / "celeba_subset", identities=("0001", "0002", "0010", "0011"), per_identity=4)
    make_orl_tree(root / "orl_faces", subjects=2, per_subject=4)
    make_yale_tree(root / "yalefaces", subjects=3)
    return root


@pytest.mark.parametrize("kind", ["cosface", "arcface"])
def test_lightcnn_identity_margin_loss_trains_and_is_recorded(tmp_path: Path, identity_root: Path, kind: str) -> None:
    recipe = LightCNNIdentity(identity_root, {**SMALL, "identity_sets": "celeba_subset,orl_faces,yalefaces",
                                              "holdout_identities": "celeba_subset=1,yalefaces=1",
                                              "margin_loss": kind, "augment": "heavy", "lr": 0.05,
                                              "margin_warmup_epochs": 0})
    ctx = LocalContext(tmp_path)
    recipe.setup(ctx)
    assert recipe.heldout_subjects == ["celeba_subset/0011", "yalefaces/subject03"]
    assert len(recipe.classes) == 3 + 2 + 2
    assert "margin_head" in recipe.modules()
    assert not recipe.model.fc2.weight.requires_grad
    # the head's weights are in the optimiser, the frozen classifier is not
    opt_params = {id(p) for g in recipe.optimizer.param_groups for p in g["params"]}
    assert id(recipe.margin_head.weight) in opt_params and id(recipe.model.fc2.weight) not in opt_params
    results = list(recipe.train_epoch(ctx, 0))
    assert results and all(torch.isfinite(r.loss) for r in results)
    # after each step the exported classifier is s * W / ||W|| of the head
    expected = recipe.margin_head.scale * F.normalize(recipe.margin_head.weight.detach(), dim=1)
    assert torch.allclose(recipe.model.fc2.weight, expected, atol=1e-6)
    meta = recipe.weights_meta()
    opts = meta["training_options"]
    assert opts["margin_loss"] == kind and opts["margin"] == (0.35 if kind == "cosface" else 0.5)
    assert opts["scale"] == 30.0 and opts["label_smoothing"] == 0.0
    assert opts["augment"] == "blur,crop,flip,jitter,rotation" and opts["crop_area"] == 0.7
    assert meta["preprocessing"].alignment == "celeba" and kind in meta["notes"]


def test_margin_loss_goes_down_on_a_fixed_batch(tmp_path: Path, identity_root: Path) -> None:
    recipe = LightCNNIdentity(identity_root, {**SMALL, "holdout_identities": 1, "margin_loss": "cosface",
                                              "margin_warmup_epochs": 0})
    recipe.setup(LocalContext(tmp_path))
    recipe.model.eval()
    x = recipe.inputs(recipe.x_train[:8], augment=False)
    y = recipe.y_train[:8]
    params = [p for p in recipe.model.parameters() if p.requires_grad] + list(recipe.margin_head.parameters())
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    losses = []
    for _ in range(20):
        loss = recipe._loss(recipe.model(x), y)[0]
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.8 * losses[0]


def test_softmax_default_unchanged_and_margin_options_need_a_margin_loss(tmp_path: Path, identity_root: Path) -> None:
    recipe = LightCNNIdentity(identity_root, {**SMALL, "holdout_identities": 1})
    recipe.setup(LocalContext(tmp_path))
    assert recipe.margin_head is None and "margin_head" not in recipe.modules()
    assert recipe.model.fc2.weight.requires_grad and recipe.settings["margin_loss"] == "softmax"
    with pytest.raises(ValueError, match="--margin"):
        LightCNNIdentity(identity_root, {**SMALL, "holdout_identities": 1, "margin": 0.3}).setup(LocalContext(tmp_path))
    with pytest.raises(ValueError, match="holdout-identities"):
        LightCNNIdentity(identity_root, {**SMALL, "holdout_identities": "nosuchset=2"}).setup(LocalContext(tmp_path))


def test_deepid_identity_margin_loss_with_verification_signal(tmp_path: Path) -> None:
    celeb = tmp_path / "celeb"
    make_identity_tree(celeb, identities=("a", "b", "c", "d", "e"), per_identity=4)
    recipe = get_recipe("tfe-jl/deepid-identity")(celeb, {"batch_size": 8, "holdout_identities": 1,
                                                          "margin_loss": "arcface", "verif_margin": 2.0,
                                                          "verif_weight": 0.05})
    ctx = LocalContext(tmp_path)
    recipe.setup(ctx)
    assert recipe.verif_margin == 2.0 and recipe.margin_head.kind == "arcface"
    results = list(recipe.train_epoch(ctx, 0))
    assert results and set(results[0].extra) == {"ident", "verif"}
    assert recipe.weights_meta()["preprocessing"].alignment == "celeba"
    assert recipe.weights_meta()["training_options"]["margin_loss"] == "arcface"
    assert recipe.extra_state()["verif_margin"] == 2.0


def test_deepid_margin_loss_drops_the_contrastive_term_by_default(tmp_path: Path) -> None:
    celeb = tmp_path / "celeb"
    make_identity_tree(celeb, identities=("a", "b", "c", "d"), per_identity=4)
    recipe = get_recipe("tfe-jl/deepid-identity")(celeb, {"batch_size": 8, "holdout_identities": 1,
                                                          "margin_loss": "cosface"})
    ctx = LocalContext(tmp_path)
    recipe.setup(ctx)
    assert recipe.verif_weight == 0.0
    assert set(next(iter(recipe.train_epoch(ctx, 0))).extra) == {"ident"}
