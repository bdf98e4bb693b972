"""ONNX export: ONNX Runtime and torch agree (<= 1e-4) for every architecture and every shipped weights."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ferkit.errors import UsageError
from ferkit.export.onnx import TOLERANCE, OnnxModel, batchnorm_count, example_input, export_model, export_onnx
from ferkit.models.registry import create_model, list_models, model_info, model_traits
from ferkit.models.weights import Preprocessing, Weights, list_weights, load_weights

pytest.importorskip("onnxruntime")

#: every architecture ferkit ships (test modules register "test-*" ones of their own)
ARCHITECTURES = [n for n in list_models() if not n.startswith("test-")]


def _fresh(name: str) -> tuple[torch.nn.Module, Weights]:
    """The registered small configuration of ``name`` (same layers as the paper size, fewer channels)."""
    cfg = dict(model_info(name).small_cfg)
    size = model_traits(name, cfg).input_size or 48
    torch.manual_seed(0)
    model = create_model(name, **cfg)
    for mod in model.modules():  # non-trivial BN statistics, so folding BN into convs is exercised
        if isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
    weights = Weights(name=f"fresh-{name}", architecture=name, classes=[f"c{i}" for i in range(model.num_classes)],
                      preprocessing=Preprocessing(input_size=size), model_cfg=cfg)
    return model.eval(), weights


def check_fresh_export(name: str, out_dir: Path) -> None:
    """Export the small build of ``name`` and check ONNX Runtime against torch (any registered architecture)."""
    model, weights = _fresh(name)
    result = export_model(model, weights, out_dir / f"{name}.onnx")
    assert all(v <= TOLERANCE for v in result.max_abs_diff.values())
    assert batchnorm_count(result.path) == 0 and batchnorm_count(result.path, optimized=True) == 0  # BN folded
    onnx_model = OnnxModel(result.path, threads=1)
    with torch.no_grad():
        probe = model(example_input(weights.preprocessing, 1))
    assert onnx_model.has_identity == (probe.identity is not None)
    # dynamic batch axis: batch sizes other than the traced one (2) run and agree
    for batch in (1, 5):
        x = example_input(weights.preprocessing, batch, seed=batch + 10)
        with torch.no_grad():
            ref = model(x)
        got = onnx_model(x)
        assert got.logits.shape == ref.logits.shape
        assert (got.logits - ref.logits).abs().max() <= TOLERANCE
        if probe.identity is not None:
            assert (got.identity - ref.identity).abs().max() <= TOLERANCE
    # the weights card travels inside the file
    assert onnx_model.weights.classes == weights.classes
    assert onnx_model.preprocessing == weights.preprocessing


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_fresh_model_onnx_matches_torch(name: str, tmp_path: Path) -> None:
    check_fresh_export(name, tmp_path)


def _checkpoint(tmp_path: Path, name: str) -> tuple[Path, torch.nn.Module, Weights]:
    """A training checkpoint of the small build of ``name``: weights with a file, as Predictor takes them."""
    model, weights = _fresh(name)
    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"weights_meta": weights.to_dict(), "modules": {"model": model.state_dict()}}, ckpt)
    return ckpt, model, weights


def test_onnx_engine_predicts_from_uint8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """uint8 crops through `Predictor(engine="onnx")`, the one door to ONNX Runtime, give torch's numbers."""
    from ferkit.inference import Predictor

    monkeypatch.setenv("FERKIT_CACHE", str(tmp_path / "cache"))
    ckpt, model, weights = _checkpoint(tmp_path, "resnet12_fer")
    predictor = Predictor(str(ckpt), device="cpu", engine="onnx", tta="none", threads=1)
    assert isinstance(predictor.model, OnnxModel) and predictor.engine == "onnx"
    crops = torch.randint(0, 256, (4, 1, 48, 48), dtype=torch.uint8)
    with torch.no_grad():
        ref = model(weights.preprocessing.normalize(crops)).probabilities
    assert torch.allclose(predictor.predict_tensor(crops).probabilities, ref, atol=1e-5)
    assert predictor.classes == weights.classes
    with pytest.raises(NotImplementedError, match="gate"):
        predictor.model(torch.zeros(1, 1, 48, 48), return_gates=True)


def test_identity_export_refused_without_identity(tmp_path: Path) -> None:
    model, weights = _fresh("resnet12_fer")
    with pytest.raises(ValueError, match="no identity output"):
        export_model(model, weights, tmp_path / "x.onnx", identity=True)


def test_foreign_onnx_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Linear(3, 2), (torch.zeros(1, 3),), str(path), dynamo=False)
    with pytest.raises(ValueError, match="not written by ferkit export-onnx"):
        OnnxModel(path)
    with pytest.raises(FileNotFoundError, match="ferkit export-onnx"):
        OnnxModel(tmp_path / "missing.onnx")


def test_checkpoint_export_via_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ferkit.cli import main

    ckpt, _, _ = _checkpoint(tmp_path, "deepid")
    out = tmp_path / "deepid.onnx"
    assert main(["export-onnx", "--checkpoint", str(ckpt), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["outputs"] == ["logits", "identity"] and max(report["max_abs_diff"].values()) <= TOLERANCE
    assert OnnxModel(out).weights.architecture == "deepid"
    assert main(["export-onnx", "--weights", "no-such-weights", "--out", str(out)]) == 2


@pytest.mark.parametrize("name", list_weights() or ["<none shipped>"])
def test_shipped_weights_onnx_matches_torch(name: str, tmp_path: Path) -> None:
    if name == "<none shipped>":
        pytest.skip("no shipped weights in resources/weights yet")
    result = export_onnx(name, tmp_path / f"{name}.onnx")
    assert all(v <= TOLERANCE for v in result.max_abs_diff.values()), result.max_abs_diff
    assert batchnorm_count(result.path, optimized=True) == 0  # BN folded (TFE-JL's heads included)
    loaded = load_weights(name, device="cpu")
    x = example_input(loaded.weights.preprocessing, 4, seed=7)
    with torch.no_grad():
        ref = loaded.model(x)
    got = OnnxModel(result.path)(x)
    assert (got.logits - ref.logits).abs().max() <= TOLERANCE


def test_predictor_engine_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`Predictor(engine="onnx")` (what `ferkit predict --engine onnx` uses) gives torch's numbers."""
    from ferkit.inference import Predictor

    monkeypatch.setenv("FERKIT_CACHE", str(tmp_path / "cache"))
    ckpt, _, _ = _checkpoint(tmp_path, "tfe_jl")
    crops = torch.randint(0, 256, (3, 1, 48, 48), dtype=torch.uint8)
    ref = Predictor(str(ckpt), device="cpu", engine="torch").predict_tensor(crops)
    onnx_predictor = Predictor(str(ckpt), device="cpu", engine="onnx", threads=1)
    assert isinstance(onnx_predictor.model, OnnxModel) and onnx_predictor.engine == "onnx"
    got = onnx_predictor.predict_tensor(crops)
    assert (got.logits - ref.logits).abs().max() <= TOLERANCE
    assert (got.identity - ref.identity).abs().max() <= TOLERANCE
    assert list((tmp_path / "cache" / "onnx").glob("*.onnx"))  # exported once into the cache
    with pytest.raises(ValueError, match="engine"):
        Predictor(str(ckpt), device="cpu", engine="tensorrt")


def test_predictor_runs_a_given_onnx_file_of_its_weights_and_refuses_another(tmp_path: Path) -> None:
    """``ferkit eval --onnx FILE`` judges an exported file through the one Predictor door."""
    from ferkit.cli import main
    from ferkit.inference import Predictor

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ckpt, _, _ = _checkpoint(tmp_path / "a", "deepid")
    other, _, _ = _checkpoint(tmp_path / "b", "resnet12_fer")
    mine, foreign = tmp_path / "mine.onnx", tmp_path / "foreign.onnx"
    assert main(["export-onnx", "--checkpoint", str(ckpt), "--out", str(mine)]) == 0
    assert main(["export-onnx", "--checkpoint", str(other), "--out", str(foreign)]) == 0
    p = Predictor(str(ckpt), engine="torch", onnx_file=mine)
    assert p.engine == "onnx" and p.engine_reason is None
    crops = torch.randint(0, 256, (2, 1, 48, 48), dtype=torch.uint8)
    np.testing.assert_allclose(p.probabilities(crops), Predictor(str(ckpt), engine="torch").probabilities(crops),
                               atol=1e-4)
    with pytest.raises(UsageError, match="was not exported from"):
        Predictor(str(ckpt), engine="torch", onnx_file=foreign)
