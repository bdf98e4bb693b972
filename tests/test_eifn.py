"""EIFN: bilinear fusion (eqs. 3-4 + signed sqrt + L2) against an explicit loop, the gradient paths of
the three modes (EIFN / EIFN* / EFN), the loss of eq. 5, and the CK+48 recipe on fixture data."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ferkit.losses.center import CenterLoss
from ferkit.models.eifn import EIFN, EIFNLoss, bilinear_fusion, signed_sqrt
from ferkit.models.registry import create_model, list_models
from tests.fixtures.train_context import LocalContext

TINY = dict(width=1 / 16, id_dim=8)  # 4..32-channel VGG-16: same graph, test-sized


# ---- bilinear fusion ------------------------------------------------------------------------------
def _fusion_by_loop(xi: torch.Tensor, xe: torch.Tensor, eps: float) -> torch.Tensor:
    """Eqs. 3-4 written literally: per sample, per location l, vec(I(l) (x) E(l)), summed; then
    y = sign(F) sqrt(|F| + eps) and z = y / ||y||_2."""
    b, ci, h, w = xi.shape
    ce = xe.shape[1]
    out = []
    for n in range(b):
        f = [0.0] * (ci * ce)
        for r in range(h):
            for c in range(w):
                for p in range(ci):
                    for q in range(ce):
                        f[p * ce + q] += float(xi[n, p, r, c]) * float(xe[n, q, r, c])
        y = [math.copysign(math.sqrt(abs(v) + eps), v) if v != 0 else 0.0 for v in f]
        norm = math.sqrt(sum(v * v for v in y))
        out.append([v / norm for v in y])
    return torch.tensor(out, dtype=torch.float64)


def test_bilinear_fusion_equals_loop_over_locations() -> None:
    g = torch.Generator().manual_seed(1)
    xi = torch.randn(2, 3, 2, 3, generator=g, dtype=torch.float64)  # signed values exercise sign()
    xe = torch.randn(2, 4, 2, 3, generator=g, dtype=torch.float64)
    got = bilinear_fusion(xi, xe, eps=1e-8)
    assert got.shape == (2, 12)
    assert torch.allclose(got, _fusion_by_loop(xi, xe, 1e-8), atol=1e-12)
    assert torch.allclose(got.norm(dim=1), torch.ones(2, dtype=torch.float64))


def test_bilinear_fusion_hand_numbers() -> None:
    # one location: I = (1, 2), E = (3,) -> F = (3, 6); sqrt -> (sqrt3, sqrt6); norm = 3
    xi = torch.tensor([[[[1.0]], [[2.0]]]])
    xe = torch.tensor([[[[3.0]]]])
    got = bilinear_fusion(xi, xe, eps=0.0)
    assert torch.allclose(got, torch.tensor([[math.sqrt(3) / 3, math.sqrt(6) / 3]]))


def test_signed_sqrt_keeps_sign_and_zero() -> None:
    x = torch.tensor([-4.0, 0.0, 9.0], requires_grad=True)
    y = signed_sqrt(x, eps=0.0)
    assert torch.allclose(y, torch.tensor([-2.0, 0.0, 3.0]))
    signed_sqrt(x, eps=1e-8).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_fusion_rejects_mismatched_maps() -> None:
    with pytest.raises(ValueError, match="same batch and spatial size"):
        bilinear_fusion(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 3, 3))


# ---- model ----------------------------------------------------------------------------------------
def test_registered_and_output_shapes() -> None:
    assert "eifn" in list_models()
    model = create_model("eifn", num_classes=7, num_subjects=5, **TINY)
    assert isinstance(model, EIFN) and model.has_identity
    out = model(torch.randn(3, 1, 64, 64))
    c = model.identity_extractor.out_channels
    assert out.logits.shape == (3, 7)
    assert out.identity.shape == (3, 8)
    assert out.identity_logits.shape == (3, 5)
    assert out.embedding.shape == (3, c * c)
    assert model.map_size == 2  # conv5_3 + ReLU + pool5 on 64x64


def test_paper_width_is_vgg16() -> None:
    model = EIFN(width=1.0)
    convs = [m for m in model.expression_extractor if isinstance(m, torch.nn.Conv2d)]
    assert [m.out_channels for m in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.identity_extractor) == 5
    assert model.expression_classifier.in_features == 512 * 512


def test_batch_norm_variant_is_vgg16_bn() -> None:
    model = create_model("eifn", batch_norm=True, **TINY)
    bns = [m for m in model.identity_extractor if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 13  # one after each of conv1_1..conv5_3, before its ReLU
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in EIFN(**TINY).modules())


def test_wrong_input_size_is_a_clear_error() -> None:
    model = EIFN(**TINY)
    with pytest.raises(ValueError, match="expects"):
        model(torch.randn(1, 1, 48, 48))
    with pytest.raises(ValueError, match="mode"):
        EIFN(mode="bogus")


# ---- gradient paths of the ablations --------------------------------------------------------------
def _grads(mode: str, loss_terms: str = "all") -> dict[str, bool]:
    """Which parameter groups receive a non-zero gradient after one backward of the eq. 5 loss."""
    torch.manual_seed(0)
    model = EIFN(num_classes=3, num_subjects=4, mode=mode, **TINY)
    centre = CenterLoss(4, 8)
    centre.centers.data.normal_()
    loss_fn = EIFNLoss(centre, lambda1=0.5, lambda2=2.0, lambda3=1.0, mode=mode)
    out = model(torch.randn(6, 1, 64, 64))
    y, s = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([0, 1, 2, 3, 0, 1])
    total, parts = loss_fn(out, y, s)
    if loss_terms == "exp":
        total = F.cross_entropy(out.logits, y)
    total.backward()

    def nonzero(module: torch.nn.Module) -> bool:
        return any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters())

    return {"id_extractor": nonzero(model.identity_extractor), "exp_extractor": nonzero(model.expression_extractor),
            "id_head": nonzero(model.identity_fc) or nonzero(model.identity_classifier),
            "exp_classifier": nonzero(model.expression_classifier), "centres": centre.centers.grad is not None}


def test_eifn_expression_loss_reaches_identity_extractor() -> None:
    g = _grads("eifn", "exp")
    assert g["id_extractor"] and g["exp_extractor"] and g["exp_classifier"]
    assert not g["id_head"]  # the FC layers belong to the face branch, not to extractor I
    assert _grads("eifn")["id_head"]


def test_eifn_star_expression_loss_stops_at_identity_maps() -> None:
    g = _grads("eifn_star", "exp")
    assert not g["id_extractor"] and g["exp_extractor"] and g["exp_classifier"]
    full = _grads("eifn_star")
    assert full["id_extractor"] and full["id_head"]  # trained by L_id alone


def test_efn_has_no_identity_supervision() -> None:
    g = _grads("efn")
    assert not g["id_head"] and not g["centres"]
    assert g["id_extractor"] and g["exp_extractor"]  # the second extractor is trained by L_exp only


def test_eq5_combines_the_terms() -> None:
    torch.manual_seed(0)
    model = EIFN(num_classes=3, num_subjects=4, **TINY)
    centre = CenterLoss(4, 8)
    out = model(torch.randn(4, 1, 64, 64))
    y, s = torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 2, 3])
    l1, l2, l3 = 0.25, 2.0, 6.0
    total, parts = EIFNLoss(centre, l1, l2, l3, mode="eifn")(out, y, s)
    expected = (l2 * (F.cross_entropy(out.identity_logits, s) + l1 * 0.5 * out.identity.pow(2).sum(1).mean())
                + l3 * F.cross_entropy(out.logits, y))
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    total_efn, parts_efn = EIFNLoss(centre, l1, l2, l3, mode="efn")(out, y, None)
    assert total_efn.item() == pytest.approx(l3 * F.cross_entropy(out.logits, y).item(), rel=1e-6)
    assert set(parts_efn) == {"L_exp"}


# ---- recipe on fixture data -----------------------------------------------------------------------
SEQUENCES = (("S010", 1, "anger"), ("S010", 2, "happy"), ("S011", 1, "surprise"), ("S011", 2, "anger"),
             ("S022", 1, "happy"), ("S022", 2, "surprise"), ("S030", 1, "anger"), ("S031", 1, "happy"))


@pytest.fixture()
def ck_tree(tmp_path: Path) -> Path:
    from tests.fixtures.datasets import make_ckplus48_tree

    make_ckplus48_tree(tmp_path / "ck", SEQUENCES)
    return tmp_path / "ck"


def _recipe(ck_tree: Path, **opts):
    from ferkit.recipes.eifn import EIFNCKPlus

    monkey = dict(width=1 / 16, id_dim=8, batch_size=12, lr=0.01, folds=0)
    monkey.update(opts)
    return EIFNCKPlus(ck_tree, monkey)


@pytest.mark.parametrize("mode", ["eifn", "eifn_star", "efn"])
def test_recipe_loss_goes_down_on_a_fixed_batch(ck_tree: Path, tmp_path: Path, mode: str) -> None:
    recipe = _recipe(ck_tree, mode=mode)
    ctx = LocalContext(tmp_path)
    recipe.setup(ctx)
    x = recipe.inputs(recipe.x_train[:8], augment=False)
    y, s = recipe.y_train[:8], recipe.s_train[:8]

    def fixed_loss() -> float:
        recipe.model.train()
        with torch.no_grad():
            return float(recipe.loss_fn(recipe.model(x), y, s)[0])

    before = fixed_loss()
    centres_before = recipe.center_loss.centers.clone()
    for epoch in range(3):
        results = list(recipe.train_epoch(ctx, epoch))
        assert results and all(math.isfinite(r.loss) for r in results)
    assert fixed_loss() < before
    # centres move only when the identity loss is on (Wen's rule after each step)
    moved = not torch.equal(recipe.center_loss.centers, centres_before)
    assert moved == (mode != "efn")
    head_trainable = any(p.requires_grad for m in recipe.model.identity_head for p in m.parameters())
    assert head_trainable == (mode != "efn")  # EFN: no identity supervision, head frozen


def test_recipe_folds_hold_out_whole_subjects(ck_tree: Path, tmp_path: Path) -> None:
    recipe = _recipe(ck_tree, folds=2, fold=0, split_seed=0)
    recipe.setup(LocalContext(tmp_path))
    ds = recipe.load_dataset(ck_tree)
    from ferkit.evaluation.kfold import subject_kfold

    train_idx, test_idx = subject_kfold(ds.subjects, 2, 0)[0]
    assert len(recipe.y_train) == len(train_idx) and len(recipe.y_val) == len(test_idx)
    # identity classes = the training subjects only, re-indexed 0..S-1
    n_train_subjects = len(set(ds.subjects[torch.as_tensor(train_idx)].tolist()))
    assert recipe.model.num_subjects == n_train_subjects
    assert sorted(set(recipe.s_train.tolist())) == list(range(n_train_subjects))
    metrics = recipe.evaluate(LocalContext(tmp_path), 0)
    assert 0.0 <= metrics["val_accuracy"] <= 1.0
    assert recipe.inputs(recipe.x_train[:2], augment=False).shape[-2:] == (64, 64)


def test_recipe_folds_zero_trains_on_every_image(ck_tree: Path, tmp_path: Path) -> None:
    recipe = _recipe(ck_tree, folds=0)
    recipe.setup(LocalContext(tmp_path))
    assert len(recipe.y_train) == len(recipe.load_dataset(ck_tree)) and recipe.x_val is None


def test_paper_augment_uses_the_paper_angles() -> None:
    from ferkit.recipes.eifn import paper_augment

    x = torch.rand(64, 1, 16, 16)
    out = paper_augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= x.min() - 1e-6 and out.max() <= x.max() + 1e-6
    # a constant image stays constant under any rotation/flip with border padding
    flat = torch.full((4, 1, 8, 8), 0.3)
    assert torch.allclose(paper_augment(flat), flat, atol=1e-6)


def test_engine_trains_and_checkpoint_loads_as_weights(ck_tree: Path, tmp_path: Path) -> None:
    engine = pytest.importorskip("ferkit.training.engine")
    from ferkit.models.weights import load_weights

    recipe = _recipe(ck_tree, mode="eifn", folds=2, fold=1)
    end = engine.train(recipe, tmp_path / "run", epochs=1, device="cpu", seed=0, json_lines=False)
    assert end["status"] == "finished" or end.get("status") in {"completed", "done"}
    loaded = load_weights(tmp_path / "run" / "checkpoint.pt", device="cpu")
    assert loaded.weights.architecture == "eifn"
    assert loaded.weights.preprocessing.input_size == 64
    out = loaded.model(torch.zeros(1, 1, 64, 64))
    assert out.logits.shape == (1, len(loaded.weights.classes)) and out.identity is not None

    # --init (the paper's stage-1 initialisation hook): extractors copied, per-data-set heads skipped
    follow = _recipe(ck_tree, mode="eifn", folds=0, init=str(tmp_path / "run" / "checkpoint.pt"))
    follow.setup(LocalContext(tmp_path))
    src = loaded.model.state_dict()
    for key, value in follow.model.state_dict().items():
        if key.startswith(("expression_extractor.", "identity_extractor.")):
            assert torch.allclose(value, src[key]), key
    assert follow.model.num_subjects != loaded.model.num_subjects  # all subjects vs one fold's


def test_ferplus_stage1_trains_efn_and_initialises_the_ckplus_stage(ck_tree: Path, tmp_path: Path) -> None:
    """Stage 1 on FER+ (no subject labels: EFN) -> its extractors start eifn/ckplus (--init)."""
    from ferkit.data.errors import DataError
    from ferkit.models.weights import get_weights, load_weights
    from ferkit.recipes.registry import get_recipe
    from ferkit.training.engine import train
    from tests.fixtures.datasets import make_ferplus_tree

    votes = [[10, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 9, 1, 0, 0, 0, 0, 0, 0, 0], [0, 0, 8, 0, 0, 2, 0, 0, 0, 0]] * 6
    make_ferplus_tree(tmp_path / "ferplus" / "FER2013Train", votes=votes)
    make_ferplus_tree(tmp_path / "ferplus" / "FER2013Valid", votes=votes[:6], start=1000)
    stage1 = get_recipe("eifn/ferplus-stage1")
    opts = {"width": 1 / 16, "id_dim": 8, "batch_size": 6, "lr": 0.01}
    with pytest.raises(DataError, match="--mode efn"):
        stage1(tmp_path / "ferplus", {**opts, "mode": "eifn"}).setup(LocalContext(tmp_path))

    end = train(stage1(tmp_path / "ferplus", opts), tmp_path / "s1", epochs=1, device="cpu", json_lines=False)
    assert end["status"] == "completed"
    meta = get_weights(tmp_path / "s1" / "checkpoint.pt")
    assert meta.name == "eifn-ferplus-stage1" and meta.model_cfg["mode"] == "efn" and len(meta.classes) == 8
    assert meta.preprocessing.alignment == "fer2013" and meta.preprocessing.input_size == 64

    follow = _recipe(ck_tree, mode="eifn", init=str(tmp_path / "s1" / "checkpoint.pt"))
    follow.setup(LocalContext(tmp_path))
    src = load_weights(tmp_path / "s1" / "checkpoint.pt", device="cpu").model.state_dict()
    own = follow.model.state_dict()
    for key in [k for k in own if k.startswith(("expression_extractor.", "identity_extractor.", "identity_fc."))]:
        assert torch.allclose(own[key], src[key]), key
    assert own["expression_classifier.weight"].shape[0] == len(follow.classes) != 8  # FER+ head not taken


# ---- the identity stage 1 (eifn/identity-stage1) ----------------------------------------------------
def test_identity_net_has_the_parameters_of_eifns_identity_branch() -> None:
    """An identity-stage model must hand EIFN its identity extractor and FC1 by name and shape."""
    ident = create_model("eifn_identity", num_classes=5, width=1 / 16, id_dim=8, batch_norm=True)
    full = create_model("eifn", num_subjects=7, width=1 / 16, id_dim=8, batch_norm=True)
    own, theirs = ident.state_dict(), full.state_dict()
    shared = [k for k in own if not k.startswith("identity_classifier.")]
    assert shared and all(k in theirs and theirs[k].shape == own[k].shape for k in shared)
    out = ident(torch.rand(2, 1, 64, 64))
    assert out.logits.shape == (2, 5) and out.identity.shape == (2, 8)
    # the feature is FC1 of the extractor's maps, the logits FC2 of the feature (the EIFN branch's equations)
    maps = ident.identity_extractor(torch.ones(1, 1, 64, 64))
    feat = ident.identity_fc(maps.flatten(1))
    assert torch.allclose(ident(torch.ones(1, 1, 64, 64)).identity, feat)
    with pytest.raises(ValueError, match="EIFN expects"):
        ident(torch.rand(1, 1, 48, 48))


def _identity_root(tmp_path: Path) -> Path:
    from tests.fixtures.datasets import make_identity_tree, make_orl_tree

    root = tmp_path / "identity"
    make_identity_tree(root / "celeba_subset", identities=("0001", "0002", "0003", "0004"), per_identity=4)
    make_orl_tree(root / "orl_faces", subjects=2, per_subject=4)
    return root


def test_identity_stage_loss_is_softmax_plus_centre_and_goes_down(tmp_path: Path) -> None:
    from ferkit.recipes.registry import get_recipe

    recipe = get_recipe("eifn/identity-stage1")(_identity_root(tmp_path), {
        "width": 1 / 16, "id_dim": 8, "batch_size": 8, "lr": 0.01, "val_every": 4, "lambda1": 0.5})
    ctx = LocalContext(tmp_path)
    recipe.setup(ctx)
    assert len(recipe.classes) == 6  # 4 CelebA-style identities + 2 ORL subjects, none held out by default
    x, y = recipe.inputs(recipe.x_train[:8], augment=False), recipe.y_train[:8]
    recipe.model.train()
    with torch.no_grad():
        out = recipe.model(x)
        total, parts = recipe._loss(out, y)
        expected = (F.cross_entropy(out.logits.float(), y, label_smoothing=recipe.label_smoothing)
                    + 0.5 * recipe.center_loss(out.identity.float(), y))
    assert torch.allclose(total, expected) and set(parts) == {"L_id_softmax", "L_center"}

    def fixed_loss() -> float:
        with torch.no_grad():
            return float(recipe._loss(recipe.model(x), y)[0])

    before, centres = fixed_loss(), recipe.center_loss.centers.clone()
    for epoch in range(4):
        assert all(math.isfinite(r.loss) for r in recipe.train_epoch(ctx, epoch))
        recipe.model.train()
    assert fixed_loss() < before
    assert not torch.equal(recipe.center_loss.centers, centres)  # Wen's update after each step
    assert recipe.preprocessing.input_size == 64 and recipe.preprocessing.mean == 0.5


def test_ckplus_takes_the_expression_extractor_from_one_init_and_the_identity_branch_from_the_next(
        ck_tree: Path, tmp_path: Path) -> None:
    from ferkit.models.weights import load_weights
    from ferkit.recipes.registry import get_recipe
    from ferkit.training.engine import train

    opts = {"width": 1 / 16, "id_dim": 8, "batch_size": 8, "lr": 0.01}
    end = train(get_recipe("eifn/identity-stage1")(_identity_root(tmp_path), {**opts, "val_every": 4}),
                tmp_path / "id", epochs=1, device="cpu", json_lines=False)
    assert end["status"] == "completed"
    first = train(_recipe(ck_tree, mode="efn"), tmp_path / "exp", epochs=1, device="cpu", json_lines=False)
    assert first["status"] == "completed"

    both = _recipe(ck_tree, mode="eifn", init=[str(tmp_path / "exp" / "checkpoint.pt"), str(tmp_path / "id" / "checkpoint.pt")])
    both.setup(LocalContext(tmp_path))
    exp_state = load_weights(tmp_path / "exp" / "checkpoint.pt", device="cpu").model.state_dict()
    id_state = load_weights(tmp_path / "id" / "checkpoint.pt", device="cpu").model.state_dict()
    own = both.model.state_dict()
    for key in own:
        if key.startswith("expression_extractor."):
            assert torch.allclose(own[key], exp_state[key]), key
        elif key.startswith(("identity_extractor.", "identity_fc.")):
            assert torch.allclose(own[key], id_state[key]), key  # the later --init wins
    assert own["identity_classifier.weight"].shape[0] != id_state["identity_classifier.weight"].shape[0]
    assert "then" in both.weights_meta()["notes"]
    # one string (older commands and checkpoints) still works
    single = _recipe(ck_tree, init=str(tmp_path / "id" / "checkpoint.pt"))
    single.setup(LocalContext(tmp_path))


def test_an_identity_stage_of_another_width_is_refused(ck_tree: Path, tmp_path: Path) -> None:
    from ferkit.errors import UsageError
    from ferkit.recipes.registry import get_recipe
    from ferkit.training.engine import train

    train(get_recipe("eifn/identity-stage1")(_identity_root(tmp_path), {"width": 1 / 8, "id_dim": 8, "batch_size": 8,
                                                                         "val_every": 4}),
          tmp_path / "id", epochs=1, device="cpu", json_lines=False)
    with pytest.raises(UsageError, match="another --width"):
        _recipe(ck_tree, init=[str(tmp_path / "id" / "checkpoint.pt")]).setup(LocalContext(tmp_path))
