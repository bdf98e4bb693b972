"""FERSNet: gates per level, synthesis range, ablations, one eq. 10 training step on CK+48 fixtures."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from ferkit.errors import UsageError
from ferkit.losses.gan import FersnetLossWeights, discriminator_loss, generator_adversarial_loss, mean_squared_norm
from ferkit.models.fersnet import DIRECTIONS, FERSNet, gate_key
from ferkit.models.patchgan import PatchDiscriminator
from ferkit.models.registry import create_model
from ferkit.models.weights import Preprocessing, Weights
from tests.fixtures.datasets import make_ckplus48_tree
from tests.fixtures.train_context import LocalContext


def _tiny(**kw: Any) -> FERSNet:
    return FERSNet(5, input_size=32, width=8, fc_dim=16, **kw)


# ---- model --------------------------------------------------------------------------------------
def test_gates_have_every_key_level_and_shape_in_open_unit_interval() -> None:
    model = _tiny().eval()
    out = model(torch.randn(3, 1, 32, 32), return_gates=True)
    assert out.logits.shape == (3, 5)
    assert len(out.gates) == 2 * 2 * 4
    for level in range(1, 5):
        side = 32 // 2 ** level  # the map after block `level` (one 2x2 pool per block)
        for direction in DIRECTIONS:
            for gate in ("r", "z"):
                g = out.gates[gate_key(gate, direction, level)]
                assert g.shape == (3, 8, side, side)
                assert float(g.detach().min()) > 0.0 and float(g.detach().max()) < 1.0
    assert model(torch.randn(1, 1, 32, 32)).gates == {}  # only when asked


def test_registered_configs_and_flags() -> None:
    light = create_model("fersnet_light")
    assert light.has_gates and light.has_synthesis and light.input_size % 16 == 0 and light.width < 256
    paper = create_model("fersnet")
    assert (paper.input_size, paper.width, paper.in_channels) == (96, 256, 1)
    assert not _tiny(mtl=False).has_synthesis and not _tiny(mtl=False).has_gates
    assert _tiny(convflu=False).has_synthesis and not _tiny(convflu=False).has_gates


def test_synthesis_shape_range_and_target_forms() -> None:
    model = _tiny().eval()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        y = model.synthesize(x, torch.tensor([0, 4]))
        same = model.synthesize(x, 3)
        grid = model.synthesize_all(x)
    assert y.shape == x.shape and same.shape == x.shape
    assert float(y.min()) >= -1.0 and float(y.max()) <= 1.0  # the input range (mean 0.5, std 0.5)
    assert grid.shape == (2, 5, 1, 32, 32)
    torch.testing.assert_close(grid[:, 3], same, atol=1e-5, rtol=1e-4)
    # the target label changes the face (f_tra feeds the decoder)
    assert float((grid[:, 0] - grid[:, 4]).abs().mean()) > 0
    with pytest.raises(ValueError):
        model.synthesize(x, 5)
    with pytest.raises(NotImplementedError):
        _tiny(mtl=False).synthesize(x, 0)


def test_odd_bottleneck_48_input_works() -> None:
    model = FERSNet(7, input_size=48, width=4, fc_dim=8).eval()
    with torch.no_grad():
        assert model.synthesize(torch.zeros(1, 1, 48, 48), 2).shape == (1, 1, 48, 48)
    with pytest.raises(ValueError, match="multiple of 16"):
        FERSNet(7, input_size=40)


def _names(model: torch.nn.Module) -> set[str]:
    return {n for n, _ in model.named_parameters()}


def test_ablations_change_exactly_the_parts_they_name() -> None:
    full, no_mtl, no_flu = _names(_tiny()), _names(_tiny(mtl=False)), _names(_tiny(convflu=False))
    top = lambda names: {n.split(".")[0] for n in names}  # noqa: E731
    # w/o MTL: the single-task FER network -> no FES encoder, ConvFLUs, transformer, decoder
    assert top(full - no_mtl) == {"fes_blocks", "flu_fer", "flu_fes", "transformer", "decoder", "to_image"}
    assert no_mtl <= full
    # w/o ConvFLU: hard sharing -> one shared encoder, so no FES encoder and no ConvFLUs; heads kept
    assert top(full - no_flu) == {"fes_blocks", "flu_fer", "flu_fes"}
    assert no_flu <= full
    # shared parts keep their shapes
    a, b = dict(_tiny().named_parameters()), dict(_tiny(convflu=False).named_parameters())
    assert all(a[n].shape == b[n].shape for n in no_flu)


def test_hard_sharing_feeds_both_heads_from_one_encoder() -> None:
    model = _tiny(convflu=False).eval()
    x = torch.randn(2, 1, 32, 32)
    f_fer, f_fes, gates = model.encode(x, return_gates=True)
    assert f_fes[-1] is f_fer and gates == {}


def test_patch_discriminator_is_conditioned_on_the_label() -> None:
    d = PatchDiscriminator(5, width=8).eval()
    x = torch.randn(2, 1, 32, 32)
    a, b = d(x, torch.tensor([0, 0])), d(x, torch.tensor([3, 3]))
    assert a.shape[:2] == (2, 1) and a.shape[-1] > 1  # one logit per patch
    assert not torch.allclose(a, b)


def test_losses_follow_eq6_and_masks() -> None:
    real, fake = torch.tensor([[2.0]]), torch.tensor([[-1.0]])
    expected = -(torch.log(torch.sigmoid(real)) + torch.log(1 - torch.sigmoid(fake)))
    torch.testing.assert_close(discriminator_loss(real, fake), expected.squeeze())
    torch.testing.assert_close(generator_adversarial_loss(fake), -torch.log(torch.sigmoid(fake)).squeeze())
    p, t = torch.zeros(3, 1, 2, 2), torch.stack([torch.full((1, 2, 2), v) for v in (1.0, 2.0, 3.0)])
    # squared L2 norm per image (4 pixels: 4 x 1 and 4 x 9), averaged over the two masked-in samples
    torch.testing.assert_close(mean_squared_norm(p, t, torch.tensor([True, False, True])), torch.tensor(20.0))
    assert float(mean_squared_norm(p, t, torch.tensor([False, False, False]))) == 0.0
    w = FersnetLossWeights()
    assert (w.gan, w.rec, w.cyc) == (0.3, 1.0, 0.5)
    assert w.idt(0, 10) == pytest.approx(0.1) and w.idt(9, 10) == pytest.approx(0.5)
    assert 0.1 < w.idt(4, 10) < 0.5


# ---- training step on CK+48 fixtures ------------------------------------------------------------


def _identity_card(tmp_path: Path) -> Path:
    """A tiny real DeepID identity net saved as a weights card (stands in for Light CNN)."""
    net = create_model("deepid", num_classes=4, input_size=32)
    torch.save(net.state_dict(), tmp_path / "id.pt")
    card = Weights(name="tiny-deepid", architecture="deepid", classes=[str(i) for i in range(4)],
                   preprocessing=Preprocessing(input_size=32, grayscale=True, mean=0.4, std=0.25),
                   model_cfg={"num_classes": 4, "input_size": 32}, file="id.pt")
    path = tmp_path / "id.json"
    path.write_text(json.dumps(card.to_dict()))
    return path


def _recipe(tmp_path: Path, **opts: Any):
    from ferkit.recipes.fersnet import FersnetCkplusRecipe

    make_ckplus48_tree(tmp_path / "ck", sequences=(
        ("S010", 4, "anger"), ("S010", 6, "happy"), ("S011", 1, "surprise"), ("S011", 2, "anger"),
        ("S022", 3, "contempt"), ("S022", 5, "happy"), ("S030", 1, "surprise"), ("S030", 2, "contempt")))
    options = {"input_size": 32, "width": 4, "batch_size": 8, "folds": 0, "disc_width": 4,
               "identity_weights": str(_identity_card(tmp_path)), "schedule_epochs": 3, **opts}
    return FersnetCkplusRecipe(tmp_path / "ck", options)


def test_one_training_step_updates_g_and_d_and_every_loss_is_finite(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    ctx = LocalContext(tmp_path / "run")
    recipe.setup(ctx)
    assert set(recipe.modules()) == {"model", "discriminator"}
    assert set(recipe.optimizers()) == {"generator", "discriminator"}
    g0 = {k: v.clone() for k, v in recipe.model.state_dict().items()}
    d0 = {k: v.clone() for k, v in recipe.discriminator.state_dict().items()}
    identity0 = {k: v.clone() for k, v in recipe.identity.state_dict().items()}
    result = next(iter(recipe.train_epoch(ctx, 0)))
    for term in ("L_cls", "L_GAN", "L_rec", "L_cyc", "L_idt", "L_D"):
        assert torch.isfinite(torch.tensor(result.extra[term])), term
    assert result.extra["L_idt"] > 0 and result.extra["L_cyc"] > 0
    assert 0 < result.extra["rec_pairs"] <= 1  # some targets had a same-subject image, so L_rec ran
    assert result.extra["lambda_idt"] == pytest.approx(0.1)
    changed = lambda before, module: [k for k, v in module.state_dict().items()  # noqa: E731
                                      if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any(k.startswith("fer_blocks") for k in changed(g0, recipe.model))
    assert any(k.startswith("decoder") for k in changed(g0, recipe.model))
    assert any(k.startswith("flu_fes") for k in changed(g0, recipe.model))
    assert changed(d0, recipe.discriminator)
    assert not changed(identity0, recipe.identity)  # the identity net is frozen


def test_epoch_end_writes_sample_grid_and_meta(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, identity_weights="none")
    ctx = LocalContext(tmp_path / "run")
    recipe.setup(ctx)
    for _ in recipe.train_epoch(ctx, 0):
        pass
    recipe.end_epoch(ctx, 0)
    import cv2

    grid = cv2.imread(str(tmp_path / "run" / "samples" / "latest.png"))
    assert grid is not None
    rows = len(recipe.grid_faces)
    assert grid.shape[1] == (len(recipe.classes) + 1) * 32 * 2 and grid.shape[0] == rows * 64 + 18
    meta = Weights.from_dict(recipe.weights_meta())
    model = meta.build_model()
    model.load_state_dict(recipe.model.state_dict())
    assert meta.preprocessing.input_size == 32 and meta.classes == recipe.classes


def test_target_sampler_finds_same_subject_with_target_expression() -> None:
    from ferkit.recipes.fersnet import TargetSampler

    labels = torch.tensor([0, 1, 1, 2, 0, 2])
    subjects = torch.tensor([0, 0, 0, 1, 1, 1])
    s = TargetSampler(labels, subjects, 3)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        idx = torch.tensor([0, 3, 4])
        target = torch.tensor([1, 0, 1])
        pair = s.same_subject(idx, target, g)
        assert int(pair[0]) in (1, 2)  # subject 0 with label 1
        assert int(pair[1]) == 4       # subject 1 with label 0
        assert int(pair[2]) == -1      # subject 1 has no label 1
        any_c = s.any_of_class(target, g)
        assert bool((labels[any_c] == target).all())
        mine = s.any_of_subject(idx, g)
        assert bool((subjects[mine] == subjects[idx]).all())  # any expression, same person


def test_no_mtl_and_fes_da_steps(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, no_mtl=True)
    ctx = LocalContext(tmp_path / "a")
    recipe.setup(ctx)
    assert set(recipe.modules()) == {"model"} and recipe.identity is None
    result = next(iter(recipe.train_epoch(ctx, 0)))
    assert set(result.extra) == {"L_cls"}

    da = _recipe(tmp_path / "b", fes_da=1, schedule_epochs=2, identity_weights="none")
    ctx = LocalContext(tmp_path / "b" / "run")
    da.setup(ctx)
    list(da.train_epoch(ctx, 1))  # the last epoch is the FES-DA fine-tuning
    n, e = len(da.images), len(da.classes)
    assert da.da_images.shape == (n * e, 1, 32, 32)
    assert torch.bincount(da.da_labels).tolist() == [n] * e  # completely balanced
    # each face keeps its real image in its own expression's slot
    own = da.da_images.view(n, e, 1, 32, 32)[torch.arange(n), da.labels]
    assert torch.equal(own, da.images)

    # FES-DA for the whole run: only as a fine-tuning of a trained FERSNet (--init)
    with pytest.raises(ValueError, match="fes-da 2 must be smaller"):
        _recipe(tmp_path / "c", fes_da=2, schedule_epochs=2, identity_weights="none").setup(
            LocalContext(tmp_path / "c" / "run"))
    ckpt = tmp_path / "trained.pt"
    torch.save({"modules": {"model": da.model.state_dict()}, "weights_meta": da.weights_meta()}, ckpt)
    whole = _recipe(tmp_path / "d", fes_da=2, schedule_epochs=2, identity_weights="none", init=str(ckpt))
    ctx = LocalContext(tmp_path / "d" / "run")
    whole.setup(ctx)
    assert set(next(iter(whole.train_epoch(ctx, 0))).extra) == {"L_cls"}  # epoch 0 already fine-tunes
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # D's schedule keeps time although FES-DA never steps D: no torch warning
        whole.end_epoch(ctx, 0)
    assert whole.opt_d.param_groups[0]["lr"] < 1e-3


def test_schedule_spans_the_runs_planned_epochs_unless_given(tmp_path: Path) -> None:
    """--schedule-epochs defaults to ctx.epochs (lr reaches lr_end in the run's last epoch); explicit wins."""
    recipe = _recipe(tmp_path / "a", identity_weights="none", schedule_epochs=None)
    ctx = LocalContext(tmp_path / "a" / "run", epochs=4)  # the engine's planned total
    recipe.setup(ctx)
    assert recipe.schedule_epochs == 4
    decay = recipe.sched_g.lr_lambdas[0]  # lr of epoch e = 1e-3 * decay(e); 1e-5 at the run's last epoch
    assert 1e-3 * decay(3) == pytest.approx(1e-5) and 1e-3 * decay(1) == pytest.approx(1e-3 * 1e-2 ** (1 / 3))

    explicit = _recipe(tmp_path / "b", identity_weights="none", schedule_epochs=7)
    ctx = LocalContext(tmp_path / "b" / "run", epochs=4)
    explicit.setup(ctx)
    assert explicit.schedule_epochs == 7

    paper = _recipe(tmp_path / "c", identity_weights="none", schedule_epochs=None)
    paper.setup(LocalContext(tmp_path / "c" / "run"))  # a context without epochs: the paper's 500
    assert paper.schedule_epochs == 500



def test_recognition_lr_mult_gives_the_recognition_stream_its_own_rate(tmp_path: Path) -> None:
    """Every G parameter in exactly one group; encoder, gates into it and classifier at lr x M, the
    rest at lr; the one schedule decays both alike; a non-positive M is a user error."""
    recipe = _recipe(tmp_path / "a", identity_weights="none", lr=2e-4, lr_end=2e-5, recognition_lr_mult=5)
    recipe.setup(LocalContext(tmp_path / "a" / "run", epochs=3))
    groups = {g["name"]: g for g in recipe.opt_g.param_groups}
    assert groups["recognition"]["lr"] == pytest.approx(1e-3) and groups["synthesis"]["lr"] == pytest.approx(2e-4)
    names = {id(p): n for n, p in recipe.model.named_parameters()}
    rec = {names[id(p)].split(".")[0] for p in groups["recognition"]["params"]}
    assert rec == {"fer_blocks", "flu_fer", "classifier"}
    assert sum(len(g["params"]) for g in groups.values()) == len(names)  # each parameter once
    recipe.sched_g.step()
    assert recipe.opt_g.param_groups[0]["lr"] / recipe.opt_g.param_groups[1]["lr"] == pytest.approx(5)
    plain = _recipe(tmp_path / "b", identity_weights="none")
    plain.setup(LocalContext(tmp_path / "b" / "run", epochs=3))
    assert {g["lr"] for g in plain.opt_g.param_groups} == {1e-3}  # default: one rate, the paper
    with pytest.raises(UsageError, match="recognition-lr-mult"):
        _recipe(tmp_path / "c", identity_weights="none", recognition_lr_mult=0).setup(
            LocalContext(tmp_path / "c" / "run", epochs=3))

def test_recognition_optimizer_sgd_trains_the_recognition_stream_on_its_own_one_cycle(tmp_path: Path) -> None:
    """--recognition-optimizer sgd: encoder, gates into it and classifier move with Nesterov SGD on a
    per-step one-cycle (not the per-epoch decay), the rest with G's Adam; both move in one G step."""
    recipe = _recipe(tmp_path / "a", identity_weights="none", recognition_optimizer="sgd", recognition_lr=0.05)
    ctx = LocalContext(tmp_path / "a" / "run", epochs=3)
    recipe.setup(ctx)
    names = {id(p): n for n, p in recipe.model.named_parameters()}
    rec = {names[id(p)] for g in recipe.opt_rec.param_groups for p in g["params"]}
    adam = {names[id(p)] for g in recipe.opt_g.param_groups for p in g["params"]}
    assert {n.split(".")[0] for n in rec} == {"fer_blocks", "flu_fer", "classifier"}
    assert rec | adam == set(names.values()) and not rec & adam
    assert recipe.opt_rec.param_groups[0]["nesterov"] and set(recipe.optimizers()) == {
        "generator", "recognition", "discriminator"}
    steps_per_epoch = len(recipe.images) // recipe.batch_size
    assert recipe.recognition_steps == 3 * steps_per_epoch
    before = {n: p.detach().clone() for n, p in recipe.model.named_parameters()}
    lr0 = recipe.opt_rec.param_groups[0]["lr"]
    first = next(iter(recipe.train_epoch(ctx, 0)))
    moved = {n for n, p in recipe.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert first.extra["lr_recognition"] == recipe.opt_rec.param_groups[0]["lr"]  # the curves show the one-cycle
    assert {"classifier.3.weight", "fer_blocks.0.0.weight"} <= moved  # SGD's half
    assert any(n.startswith("decoder.") for n in moved)  # Adam's half
    assert recipe.opt_rec.param_groups[0]["lr"] > lr0  # one-cycle warm-up: stepped per step
    lr_now, adam_lr = recipe.opt_rec.param_groups[0]["lr"], recipe.opt_g.param_groups[0]["lr"]
    recipe.end_epoch(ctx, 0)  # the per-epoch decay steps G's Adam, not the one-cycle
    assert recipe.opt_rec.param_groups[0]["lr"] == lr_now and recipe.opt_g.param_groups[0]["lr"] < adam_lr
    assert "recognition" in recipe.schedulers()  # checkpointed with the rest
    with pytest.raises(UsageError, match="recognition-optimizer"):
        recipe.load_extra_state({"recognition_optimizer": "adam"})
    with pytest.raises(UsageError, match="one-cycle"):
        recipe.load_extra_state({"recognition_optimizer": "sgd", "recognition_steps": 999})
    assert "Nesterov SGD" in recipe.weights_meta()["notes"]
    with pytest.raises(UsageError, match="recognition-lr-mult"):
        _recipe(tmp_path / "b", identity_weights="none", recognition_optimizer="sgd",
                recognition_lr_mult=5).setup(LocalContext(tmp_path / "b" / "run", epochs=3))
    with pytest.raises(UsageError, match="recognition-lr is the peak rate"):  # given, but Adam would ignore it
        _recipe(tmp_path / "c", identity_weights="none", recognition_lr=0.1).setup(
            LocalContext(tmp_path / "c" / "run", epochs=3))
    with pytest.raises(UsageError, match="recognition-lr must be positive"):
        _recipe(tmp_path / "d", identity_weights="none", recognition_optimizer="sgd", recognition_lr=0).setup(
            LocalContext(tmp_path / "d" / "run", epochs=3))
    with pytest.raises(UsageError, match="max-scale"):  # a zoom of 1 would draw a scale of 0
        _recipe(tmp_path / "e", identity_weights="none", max_scale=1.0).setup(
            LocalContext(tmp_path / "e" / "run", epochs=3))
    two_ranks = _recipe(tmp_path / "f", identity_weights="none", recognition_optimizer="sgd", batch_size=7)
    two_ranks.setup(LocalContext(tmp_path / "f" / "run", epochs=3, world_size=2))
    # as ctx.batches splits it: 3 faces per rank, global batches of 6
    assert two_ranks.recognition_steps == 3 * (len(two_ranks.images) // 6)


def test_shield_recognition_keeps_synthesis_losses_out_of_the_recognition_stream() -> None:
    """Same outputs; a loss on the synthesised face reaches the FES stream but, shielded, no parameter
    of the recognition stream, while L_cls still reaches the FES encoder (FER <- FES gates)."""
    torch.manual_seed(0)
    net = FERSNet(num_classes=3, input_size=32, width=4, fc_dim=8, skips=True).train()
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([0, 2])
    recognition = ("fer_blocks.", "flu_fer.", "classifier.")

    def grads(loss: torch.Tensor) -> dict[str, float]:
        net.zero_grad(set_to_none=True)
        loss.backward()
        return {n: float(p.grad.abs().sum()) if p.grad is not None else 0.0 for n, p in net.named_parameters()}

    torch.manual_seed(1)
    plain = net(x, target=t)
    torch.manual_seed(1)
    shielded = net(x, target=t, shield_recognition=True)
    assert torch.allclose(plain.synthesis, shielded.synthesis) and torch.allclose(plain.logits, shielded.logits)
    open_grads = grads(plain.synthesis.square().mean())
    shut = grads(net(x, target=t, shield_recognition=True).synthesis.square().mean())
    assert any(v > 0 for n, v in open_grads.items() if n.startswith(recognition))
    assert all(v == 0 for n, v in shut.items() if n.startswith(recognition))
    assert any(v > 0 for n, v in shut.items() if n.startswith("fes_blocks."))
    cls = grads(torch.nn.functional.cross_entropy(net(x, target=t, shield_recognition=True).logits, t))
    assert any(v > 0 for n, v in cls.items() if n.startswith("fes_blocks."))
    with pytest.raises(ValueError, match="shield_recognition"):
        FERSNet(num_classes=3, input_size=32, width=4, fc_dim=8, convflu=False)(x, target=t, shield_recognition=True)


def test_shield_recognition_reaches_both_synthesis_passes_and_needs_two_streams(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path / "a", identity_weights="none", shield_recognition=True)
    ctx = LocalContext(tmp_path / "a" / "run", epochs=3)
    recipe.setup(ctx)
    calls, real_g = [], recipe.g

    def recording_g(x: torch.Tensor, **kw: Any):
        calls.append(kw.get("shield_recognition"))
        return real_g(x, **kw)

    recipe.g = recording_g
    next(iter(recipe.train_epoch(ctx, 0)))
    assert calls == [True, True]  # source -> target, and the cycle back
    assert "stop-gradient" in recipe.weights_meta()["notes"]
    with pytest.raises(UsageError, match="shield-recognition"):
        _recipe(tmp_path / "b", identity_weights="none", no_convflu=True, shield_recognition=True).setup(
            LocalContext(tmp_path / "b" / "run", epochs=3))

def test_recognition_sgd_without_mtl_leaves_nothing_for_adam(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, identity_weights="none", recognition_optimizer="sgd", no_mtl=True)
    ctx = LocalContext(tmp_path / "run", epochs=3)
    recipe.setup(ctx)
    assert set(recipe.optimizers()) == {"recognition"} and set(recipe.schedulers()) == {"recognition"}
    before = recipe.model.classifier[3].weight.detach().clone()
    result = next(iter(recipe.train_epoch(ctx, 0)))
    assert torch.isfinite(result.loss) and not torch.equal(before, recipe.model.classifier[3].weight)
    recipe.end_epoch(ctx, 0)


def test_label_smoothing_and_zoom_reach_the_loss_and_the_augmentation(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """L_cls is the label-smoothed cross-entropy of the step's own logits; --max-scale reaches augment_batch."""
    import ferkit.recipes.fersnet as fersnet_recipe

    recipe = _recipe(tmp_path, identity_weights="none", no_mtl=True, label_smoothing=0.3, max_scale=0.2)
    ctx = LocalContext(tmp_path / "run", epochs=3)
    recipe.setup(ctx)
    seen: dict[str, Any] = {}

    def recording_augment(x: torch.Tensor, **kw: Any) -> torch.Tensor:
        seen.update(kw)
        return x  # no random transform: the test can recompute the step's logits

    monkeypatch.setattr(fersnet_recipe, "augment_batch", recording_augment)
    idx = next(iter(ctx.batches(len(recipe.images), recipe.batch_size, 0)))
    with torch.no_grad():
        logits = recipe.model(recipe._prepare(recipe.images[idx])).logits
    y = recipe.labels[idx]
    expected = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.3)
    assert not torch.isclose(expected, torch.nn.functional.cross_entropy(logits, y))
    result = recipe._classifier_step(ctx, recipe.images[idx], y)
    assert float(result.loss) == pytest.approx(float(expected), rel=1e-4)
    assert seen["max_scale"] == 0.2

def test_own_target_prob_uses_the_source_as_its_own_target(tmp_path: Path) -> None:
    """--own-target-prob 1: every target is the source's expression and L_rec compares with the source."""
    recipe = _recipe(tmp_path, identity_weights="none", own_target_prob=1.0, augment="off")
    ctx = LocalContext(tmp_path / "run")
    recipe.setup(ctx)
    batches, targets = [], []
    real_batches, real_g = ctx.batches, recipe.g

    def recording_batches(*args: Any):
        for idx in real_batches(*args):
            batches.append(idx)
            yield idx

    def recording_g(x: torch.Tensor, target: Any = None, **kw: Any):
        if target is not None and not targets:
            targets.append(target.clone())  # the first synthesis of the step: source -> target
        return real_g(x, target=target, **kw)

    ctx.batches, recipe.g = recording_batches, recording_g
    result = next(iter(recipe.train_epoch(ctx, 0)))
    assert result.extra["rec_pairs"] == 1.0  # every sample had an I^t: itself
    assert torch.equal(targets[0], recipe.labels[batches[0]])
    with pytest.raises(ValueError, match="own-target-prob"):
        _recipe(tmp_path / "bad", identity_weights="none", own_target_prob=1.5).setup(LocalContext(tmp_path / "b"))


def test_lambda_gan_zero_skips_the_discriminator(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, identity_weights="none", lambda_gan=0.0)
    ctx = LocalContext(tmp_path / "run")
    recipe.setup(ctx)
    d0 = {k: v.clone() for k, v in recipe.discriminator.state_dict().items()}
    result = next(iter(recipe.train_epoch(ctx, 0)))
    assert result.extra["L_GAN"] == 0.0 and result.extra["L_D"] == 0.0
    assert all(torch.equal(v, d0[k]) for k, v in recipe.discriminator.state_dict().items())
    assert "no adversarial term" in recipe.weights_meta()["notes"]


def test_init_copies_matching_tensors_and_rejects_other_models(tmp_path: Path) -> None:
    first = _recipe(tmp_path / "a", identity_weights="none")
    ctx = LocalContext(tmp_path / "a" / "run")
    first.setup(ctx)
    ckpt = tmp_path / "first.pt"
    torch.save({"modules": {"model": first.model.state_dict()}, "weights_meta": first.weights_meta()}, ckpt)
    card = Weights.from_dict(first.weights_meta())
    assert card.architecture.startswith("fersnet")

    second = _recipe(tmp_path / "b", identity_weights="none", init=str(ckpt))
    second.setup(LocalContext(tmp_path / "b" / "run"))
    for k, v in first.model.state_dict().items():
        torch.testing.assert_close(second.model.state_dict()[k], v, msg=k)
    assert "initialised from" in second.weights_meta()["notes"]

    wider = _recipe(tmp_path / "c", identity_weights="none", init=str(ckpt), width=8)
    with pytest.raises(ValueError, match="no tensor matches"):
        wider.setup(LocalContext(tmp_path / "c" / "run"))
    with pytest.raises(ValueError, match="must be a FERSNet"):
        _recipe(tmp_path / "d", identity_weights="none", init=str(_identity_card(tmp_path))).setup(
            LocalContext(tmp_path / "d" / "run"))


def test_identity_net_defaults_to_the_shipped_one(tmp_path: Path) -> None:
    """Not giving --identity-weights means the default shipped net, not 'none'."""
    from ferkit.evaluation.synthesis import resolve_identity_weights

    recipe = _recipe(tmp_path, identity_weights=None)
    recipe.setup(LocalContext(tmp_path / "run"))
    assert recipe.identity is not None and recipe.identity.name == resolve_identity_weights(None)


def test_skips_feed_each_fes_level_to_the_decoder_of_its_size() -> None:
    assert not create_model("fersnet").skips and create_model("fersnet_light").skips
    model = FERSNet(3, input_size=32, width=4, fc_dim=8, skips=True).eval()
    plain = FERSNet(3, input_size=32, width=4, fc_dim=8).eval()
    assert [b[0].in_channels for b in model.decoder] == [8, 8, 8, 8]
    assert [b[0].in_channels for b in plain.decoder] == [8, 4, 4, 4]
    x = torch.randn(2, 1, 32, 32)
    _, levels, _ = model.encode(x)
    assert [f.shape[-1] for f in levels] == [16, 8, 4, 2]
    target = torch.tensor([0, 2])
    base = model.decode(levels, target)
    assert base.shape == x.shape
    for i in range(3):  # every skip level reaches the output
        changed = [f + 1.0 if j == i else f for j, f in enumerate(levels)]
        assert not torch.allclose(model.decode(changed, target), base), i
    changed = [f + 1.0 if j < 3 else f for j, f in enumerate(levels)]
    torch.testing.assert_close(plain.decode(changed, target), plain.decode(levels, target))  # no skips: unused


def test_subject_target_draw_gives_every_sample_a_same_subject_target(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, identity_weights="none")
    recipe.setup(LocalContext(tmp_path / "run"))
    assert recipe.target_draw == "subject"  # the default where the data has subject ids
    result = next(iter(recipe.train_epoch(LocalContext(tmp_path / "run"), 0)))
    assert result.extra["rec_pairs"] == 1.0
    uniform = _recipe(tmp_path / "u", identity_weights="none", target_draw="uniform")
    uniform.setup(LocalContext(tmp_path / "u" / "run"))
    assert uniform.target_draw == "uniform" and "targets drawn: uniform" in uniform.weights_meta()["notes"]


# ---- CPU recipe options: resize upsampling, per-element loss means, L_cls on synthesised faces ------


def test_resize_upsampling_replaces_every_transposed_convolution() -> None:
    paper, resize = _tiny(skips=True), _tiny(skips=True, upsample="resize")
    kinds = lambda m: {type(x).__name__ for x in m.decoder.modules()}  # noqa: E731
    assert "ConvTranspose2d" in kinds(paper) and "ConvTranspose2d" not in kinds(resize)
    assert "Upsample" in kinds(resize)
    x = torch.randn(2, 1, 32, 32)
    assert resize.eval().synthesize(x, 1).shape == x.shape
    with pytest.raises(ValueError, match="upsample"):
        _tiny(upsample="bicubic")


def test_mean_norm_is_the_per_element_mean_of_the_sum() -> None:
    a, b = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    mask = torch.tensor([True, False, True])
    torch.testing.assert_close(mean_squared_norm(a, b, mask, norm="mean"), mean_squared_norm(a, b, mask) / 64)
    with pytest.raises(ValueError, match="norm"):
        mean_squared_norm(a, b, norm="max")


def test_cls_fake_critic_sends_gradients_to_pixels_only(tmp_path: Path) -> None:
    """L_cls on synthesised faces: the recognition stream judges but does not learn from fakes."""
    recipe = _recipe(tmp_path, identity_weights="none", lambda_cls_fake=1.0, loss_norm="mean",
                     upsample="resize")
    recipe.setup(LocalContext(tmp_path / "run"))
    model = recipe.model.train()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    fake = torch.randn(4, 1, 32, 32, requires_grad=True)
    logits = recipe._critic_logits(fake)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    assert fake.grad is not None and float(fake.grad.abs().sum()) > 0
    assert all(p.grad is None for p in model.parameters())  # no parameter learns from this term
    assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())  # BN statistics untouched
    assert model.training  # the training mode is restored
    # frozen = the live weights in eval mode: same logits as the model itself in eval mode
    torch.testing.assert_close(logits, model.eval()(fake.detach()).logits)
    model.train()
    result = next(iter(recipe.train_epoch(LocalContext(tmp_path / "run"), 0)))
    assert result.extra["L_cls_fake"] > 0
    assert "frozen recognition stream" in recipe.weights_meta()["notes"]
    with pytest.raises(ValueError, match="lambda-cls-fake"):
        _recipe(tmp_path / "b", identity_weights="none", lambda_cls_fake=1.0, no_mtl=True).setup(
            LocalContext(tmp_path / "b" / "run"))


def test_init_across_class_lists_carries_shared_classes_by_name(tmp_path: Path) -> None:
    """A FER+-style source (other classes, other order) warm-starts the CK+ model class by class."""
    from ferkit.models.weights import transfer_class_slots
    from ferkit.training.checkpoint import FORMAT

    source_classes = ["neutral", "happiness", "surprise", "anger", "contempt"]  # FER+ spellings
    src = FERSNet(len(source_classes), input_size=32, width=4, fc_dim=128, skips=True)
    src_d = PatchDiscriminator(len(source_classes), width=4)
    meta = Weights(name="src", architecture="fersnet_light", classes=source_classes,
                   preprocessing=Preprocessing(input_size=32, grayscale=True, mean=0.5, std=0.5),
                   model_cfg={"num_classes": 5, "input_size": 32, "width": 4, "fc_dim": 128, "skips": True})
    ckpt = tmp_path / "src.pt"
    torch.save({"format": FORMAT, "weights_meta": meta.to_dict(),
                "modules": {"model": src.state_dict(), "discriminator": src_d.state_dict()}}, ckpt)
    recipe = _recipe(tmp_path, identity_weights="none", init=str(ckpt))
    ctx = LocalContext(tmp_path / "run")
    recipe.setup(ctx)
    own = recipe.classes  # anger, contempt, happy, surprise (CK+ folder names)
    assert own == ["anger", "contempt", "happy", "surprise"]
    src_index = {"anger": 3, "contempt": 4, "happy": 1, "surprise": 2}
    w_own, w_src = recipe.model.classifier[3].weight, src.classifier[3].weight
    t_own, t_src = recipe.model.transformer.fc.weight, src.transformer.fc.weight
    d_own, d_src = recipe.discriminator.net[0].weight, src_d.net[0].weight
    for i, name in enumerate(own):
        torch.testing.assert_close(w_own[i], w_src[src_index[name]])
        torch.testing.assert_close(t_own[:, i], t_src[:, src_index[name]])
        torch.testing.assert_close(d_own[:, 1 + i], d_src[:, 1 + src_index[name]])
    torch.testing.assert_close(d_own[:, 0], d_src[:, 0])  # the image channel's filters
    torch.testing.assert_close(recipe.model.fer_blocks[0][0].weight, src.fer_blocks[0][0].weight)
    assert any("4 shared classes" in m and "discriminator" in m for m in ctx.messages)
    # a tensor whose class dimension cannot be told apart is left alone
    plain = torch.nn.Linear(3, 2)
    before = plain.weight.clone()
    assert transfer_class_slots(plain, {"weight": torch.zeros(5, 3)}, [(0, 0)], 4, 2) == []
    torch.testing.assert_close(plain.weight, before)


def test_gate_spread_measures_the_maps_the_app_draws() -> None:
    from ferkit.evaluation.gates import gate_spread

    model = _tiny()
    images = torch.randint(0, 256, (5, 1, 32, 32), dtype=torch.uint8)
    to_input = lambda x: x.float() / 127.5 - 1  # noqa: E731
    stats = gate_spread(model, images, to_input, batch_size=2)
    assert set(stats) == set(model.eval()(to_input(images), return_gates=True).gates)
    level1 = model(to_input(images), return_gates=True).gates[gate_key("r", DIRECTIONS[0], 1)].mean(dim=1)
    assert stats[gate_key("r", DIRECTIONS[0], 1)]["mean"] == pytest.approx(float(level1.mean()), abs=1e-5)
    assert stats[gate_key("r", DIRECTIONS[0], 1)]["across_faces_std"] == pytest.approx(
        float(level1.std(dim=0).mean()), abs=1e-5)
    for st in stats.values():
        assert 0 < st["mean"] < 1 and st["spatial_range"] >= 0 and st["across_faces_std"] >= 0
    # the same image five times: the gates cannot differ across faces
    same = gate_spread(model, images[:1].expand(5, -1, -1, -1), to_input)
    assert all(st["across_faces_std"] < 1e-6 for st in same.values())
    with pytest.raises(ValueError, match="no ConvFLU gates"):
        gate_spread(_tiny(mtl=False), images, to_input)


def test_flip_tta_is_validated_and_recorded_in_the_card(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, identity_weights="none", tta="flip", folds=2)
    ctx = LocalContext(tmp_path / "run")
    recipe.setup(ctx)
    metrics = recipe.evaluate(ctx, 0)
    assert {"val_accuracy", "val_accuracy_no_tta", "val_loss"} <= set(metrics)
    assert recipe.weights_meta()["tta"] == "flip"
    plain = _recipe(tmp_path / "p", identity_weights="none", folds=2)
    plain.setup(LocalContext(tmp_path / "p" / "run"))
    assert "val_accuracy_no_tta" not in plain.evaluate(ctx, 0) and plain.weights_meta()["tta"] == "none"


def test_gate_spread_names_the_channel_that_varies_most_over_a_face() -> None:
    """The channel mean cancels; the card stores, per gate, the channel whose map moves most over faces."""
    from ferkit.evaluation.gates import gate_channels_from, gate_spread

    model = _tiny().eval()
    images = torch.randint(0, 256, (6, 1, 32, 32), dtype=torch.uint8)
    to_input = lambda x: x.float() / 127.5 - 1  # noqa: E731
    stats = gate_spread(model, images, to_input, batch_size=4)
    gates = model(to_input(images), return_gates=True).gates
    for key, st in stats.items():
        flat = gates[key].float().flatten(2)
        ranges = (flat.quantile(0.95, dim=2) - flat.quantile(0.05, dim=2)).mean(dim=0)
        assert st["channels"] == gates[key].shape[1]
        assert st["selective_channel"] == int(ranges.argmax())
        assert st["selective_channel_range"] == pytest.approx(float(ranges.max()), abs=1e-5)
        assert st["selective_channel_range"] >= st["spatial_range"] - 1e-6 or st["spatial_range"] < 0.05
    assert gate_channels_from(stats) == {k: s["selective_channel"] for k, s in stats.items()}


def test_export_writes_gate_channels_into_the_card_and_refuses_impossible_ones(tmp_path: Path) -> None:
    from ferkit.errors import UsageError
    from ferkit.models.weights import Weights
    from ferkit.training.checkpoint import save_checkpoint
    from ferkit.training.export import export_weights

    recipe = _recipe(tmp_path, identity_weights="none", folds=2)
    ctx = LocalContext(tmp_path / "run")
    recipe.setup(ctx)
    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint({"modules": {"model": recipe.model.state_dict()}, "weights_meta": recipe.weights_meta()}, ckpt)
    key = gate_key("z", DIRECTIONS[1], 2)
    export_weights(ckpt, "gated", out_dir=tmp_path / "w", gate_channels={key: 3})
    card = Weights.from_dict(json.loads((tmp_path / "w" / "gated.json").read_text()))
    assert card.gate_channels == {key: 3}
    with pytest.raises(UsageError, match="channels"):
        export_weights(ckpt, "bad", out_dir=tmp_path / "w", gate_channels={key: 10_000})
    with pytest.raises(UsageError, match="no gate"):
        export_weights(ckpt, "bad", out_dir=tmp_path / "w", gate_channels={"q/x<-y/9": 0})


# ---- masked output (GANimation's attention mask) -------------------------------------------------
def test_masked_output_copies_the_input_where_the_mask_is_zero_and_paints_where_it_is_one() -> None:
    model = _tiny(output="masked", skips=True).eval()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        levels = model.encode(x)[1]
        painted = model.to_image  # the decoder's own image, recomputed below through a hook
        seen: dict[str, torch.Tensor] = {}
        handle = painted.register_forward_hook(lambda m, i, o: seen.__setitem__("c", o))
        y, mask, painted = model.decode(levels, torch.tensor([1, 3]), source=x, return_parts=True)
        handle.remove()
        assert mask.shape == (2, 1, 32, 32) and float(mask.min()) > 0 and float(mask.max()) < 1
        torch.testing.assert_close(painted, seen["c"])
        torch.testing.assert_close(y, mask * seen["c"] + (1 - mask) * x)  # M * C + (1 - M) * I
        model.to_mask[0].bias.fill_(-30.0)  # mask ~ 0: the input comes back unchanged
        torch.testing.assert_close(model.synthesize(x, 2), x, atol=1e-6, rtol=0)
        model.to_mask[0].bias.fill_(30.0)  # mask ~ 1: the decoder's image alone (the direct output)
        y1 = model.synthesize(x, 2)
        torch.testing.assert_close(y1, model.to_image(_decoder_features(model, levels, 2)), atol=1e-6, rtol=0)
        # synthesize_all blends every target with its own source face
        torch.testing.assert_close(model.synthesize_all(x)[:, 2], y1)
        out = model(x, target=torch.tensor([2, 2]))
        torch.testing.assert_close(out.synthesis, y1)
        assert out.synthesis_mask is not None and model(x, target=2).synthesis_mask.shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="pass source="):
        model.decode(levels, torch.tensor([1, 3]))
    direct = _tiny()(x, target=1)
    assert direct.synthesis_mask is None and direct.synthesis_painted is direct.synthesis  # nothing blended
    with pytest.raises(ValueError, match="output must be one of"):
        _tiny(output="soft")


def _decoder_features(model: FERSNet, levels: list[torch.Tensor], target: int) -> torch.Tensor:
    """The last decoder block's map (what to_image and to_mask read) for one target."""
    t = torch.full((levels[0].shape[0],), target)
    onehot = torch.nn.functional.one_hot(t, model.num_classes).float()
    h = model.decoder[0](torch.cat([levels[-1], model.transformer(onehot)], dim=1))
    for block, skip in zip(model.decoder[1:], reversed(levels[:-1])):
        h = block(torch.cat([h, skip], dim=1))
    return h


def test_mask_regularisers_are_the_mean_and_the_total_variation() -> None:
    from ferkit.losses.gan import mask_regularisers

    flat = torch.full((2, 1, 4, 4), 0.25)
    mean, tv = mask_regularisers(flat)
    assert float(mean) == pytest.approx(0.25) and float(tv) == 0.0
    stripes = torch.zeros(1, 1, 4, 4)
    stripes[..., :, 1::2] = 1.0  # every horizontal neighbour differs by 1, no vertical one
    mean, tv = mask_regularisers(stripes)
    assert float(mean) == pytest.approx(0.5) and float(tv) == pytest.approx(1.0)


def test_masked_output_trains_its_mask_and_init_fills_the_rest_from_a_direct_model(tmp_path: Path) -> None:
    first = _recipe(tmp_path / "a", identity_weights="none")
    first.setup(LocalContext(tmp_path / "a" / "run"))
    ckpt = tmp_path / "direct.pt"
    torch.save({"modules": {"model": first.model.state_dict()}, "weights_meta": first.weights_meta()}, ckpt)

    recipe = _recipe(tmp_path / "b", synthesis_output="masked", lambda_mask=0.5, lambda_mask_tv=0.2, lambda_painted=2.0,
                     init=str(ckpt))
    ctx = LocalContext(tmp_path / "b" / "run")
    recipe.setup(ctx)
    assert recipe.model.output == "masked" and recipe.weights_meta()["model_cfg"]["output"] == "masked"
    torch.testing.assert_close(recipe.model.to_image[0].weight, first.model.to_image[0].weight)
    mask0 = recipe.model.to_mask[0].weight.detach().clone()
    result = next(iter(recipe.train_epoch(ctx, 0)))
    assert result.extra["L_mask"] > 0 and 0 < result.extra["mask_mean"] < 1 and result.extra["L_painted"] > 0
    assert not torch.equal(recipe.model.to_mask[0].weight, mask0)  # the mask head trains
    assert ("masked synthesis output (mask mean x 0.5, total variation x 0.2, L_rec + L_cyc on the painted image x 2.0)"
            in recipe.weights_meta()["notes"])
    # a card of the masked model rebuilds it with its mask head
    rebuilt = create_model(recipe.arch, **recipe.weights_meta()["model_cfg"])
    assert rebuilt.output == "masked" and hasattr(rebuilt, "to_mask")

    plain = _recipe(tmp_path / "c", identity_weights="none")
    plain.setup(LocalContext(tmp_path / "c" / "run"))
    plain_step = next(iter(plain.train_epoch(LocalContext(tmp_path / "c" / "run"), 0)))
    assert plain_step.extra["L_mask"] == 0 and plain_step.extra["L_painted"] == 0
    with pytest.raises(UsageError, match="--synthesis-output masked"):
        _recipe(tmp_path / "d", identity_weights="none", lambda_mask=0.1).setup(LocalContext(tmp_path / "d" / "run"))
    with pytest.raises(UsageError, match="--synthesis-output masked"):
        _recipe(tmp_path / "e", identity_weights="none", lambda_painted=1).setup(LocalContext(tmp_path / "e" / "run"))


def test_painted_loss_is_rec_and_cyc_on_the_painted_images(tmp_path: Path) -> None:
    from ferkit.models.outputs import ModelOutput

    recipe = _recipe(tmp_path, identity_weights="none", synthesis_output="masked", lambda_painted=1.0,
                     lambda_rec=3.0, lambda_cyc=5.0, loss_norm="mean")
    recipe.setup(LocalContext(tmp_path / "run"))
    x, x_t = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    logits = torch.zeros(2, 7)
    out = ModelOutput(logits, synthesis=x, synthesis_mask=x[:, :1], synthesis_painted=torch.full((2, 1, 4, 4), 0.5))
    cycle = ModelOutput(logits, synthesis=x, synthesis_mask=x[:, :1], synthesis_painted=torch.full((2, 1, 4, 4), 2.0))
    has_pair = torch.tensor([True, False])
    # L_rec: (0.5 - 1)^2 on the one sample with a pair; L_cyc: (2 - 0)^2
    expected = 3.0 * 0.25 + 5.0 * 4.0
    assert float(recipe._painted_loss(out, cycle, x, x_t, has_pair)) == pytest.approx(expected)
