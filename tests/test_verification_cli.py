"""`ferkit eval-verification` end to end: identity folders (drawn pairs), LFW pairs files, errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ferkit.cli import main
from ferkit.data.images import read_images
from ferkit.evaluation.verification import evaluate_pairs, parse_identities
from ferkit.models.base import FerModel
from ferkit.models.outputs import ModelOutput
from ferkit.models.registry import _MODELS, register_model
from ferkit.models.weights import Preprocessing, Weights
from tests.fixtures.datasets import LFW_MATCHED, LFW_MISMATCHED, make_lfw_tree, write_image, write_lfw_pairs

PIXELS = "test-verif-pixels"
NO_ID = "test-verif-noid"


class PixelIdentity(FerModel):
    """Identity feature = the centred pixels: cosine similarity is then the images' correlation."""

    has_identity = True

    def __init__(self, num_classes: int = 2, identity: bool = True):
        super().__init__()
        self.num_classes = num_classes
        self.identity = identity

    def forward(self, x: torch.Tensor, *, return_gates: bool = False) -> ModelOutput:
        flat = x.flatten(1)
        feat = flat - flat.mean(1, keepdim=True)
        return ModelOutput(logits=torch.zeros(x.shape[0], self.num_classes), identity=feat if self.identity else None)


for _name, _ident in ((PIXELS, True), (NO_ID, False)):
    if _name not in _MODELS:
        register_model(_name, paper="test only")(lambda num_classes=2, _i=_ident: PixelIdentity(num_classes, _i))


def _checkpoint(path: Path, architecture: str = PIXELS, heldout: tuple[str, ...] = ()) -> Path:
    w = Weights(name="pixels", architecture=architecture, classes=["a", "b"],
                preprocessing=Preprocessing(input_size=16, grayscale=True, mean=0.5, std=0.5),
                heldout_identities=list(heldout))
    torch.save({"weights_meta": w.to_dict(), "modules": {"model": {}}}, path)
    return path


def _identity_tree(root: Path, n_ids: int = 6, per_id: int = 5) -> list[str]:
    """Each identity is one random pattern plus small per-image noise: cosine separates them perfectly."""
    names = [f"person{i:02d}" for i in range(n_ids)]
    for i, name in enumerate(names):
        base = np.random.default_rng(i).integers(40, 216, (32, 32)).astype(np.int16)
        for k in range(per_id):
            noise = np.random.default_rng(1000 * i + k).integers(-6, 7, (32, 32))
            write_image(root / name / f"{k:03d}.png", np.clip(base + noise, 0, 255).astype(np.uint8))
    return names


def test_identity_folders_separable_gives_perfect_scores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _identity_tree(tmp_path / "ids")
    ckpt = _checkpoint(tmp_path / "m.pt")
    report = tmp_path / "report"
    rc = main(["eval-verification", "--checkpoint", str(ckpt), "--data", str(tmp_path / "ids"), "--n-pairs", "100",
               "--json", "--report", str(report), "--device", "cpu"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["accuracy"] == 1.0 and out["auc"] == 1.0 and out["eer"] == 0.0
    assert out["n_same"] == out["n_different"] == 50 and out["identities"] == 6 and out["images"] == 30
    assert len(out["fold_accuracies"]) == 10 and out["feature_dim"] == 16 * 16
    assert (report / "roc.png").stat().st_size > 1000
    assert json.loads((report / "verification.json").read_text())["auc"] == 1.0


def test_identities_filter_and_heldout_card_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = _identity_tree(tmp_path / "ids")
    ckpt = _checkpoint(tmp_path / "m.pt", heldout=(names[0], names[2], names[4]))
    rc = main(["eval-verification", "--checkpoint", str(ckpt), "--data", str(tmp_path / "ids"), "--n-pairs", "40",
               "--identities", "heldout", "--json", "--device", "cpu"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["identities"] == 3 and out["images"] == 15
    assert parse_identities("a, b,,c") == ["a", "b", "c"]
    (tmp_path / "names.txt").write_text("x\ny\n")
    assert parse_identities(f"@{tmp_path / 'names.txt'}") == ["x", "y"]
    with pytest.raises(ValueError, match="lists no held-out"):
        parse_identities("heldout", [])
    assert main(["eval-verification", "--checkpoint", str(ckpt), "--data", str(tmp_path / "ids"),
                 "--identities", "nobody"]) == 2
    assert "not in" in capsys.readouterr().err


@pytest.mark.parametrize("folds", [None, 2])
def test_lfw_pairs_file_wiring(tmp_path: Path, capsys: pytest.CaptureFixture[str], folds) -> None:
    make_lfw_tree(tmp_path)
    write_lfw_pairs(tmp_path / "pairs.txt", folds)
    ckpt = _checkpoint(tmp_path / "m.pt")
    rc = main(["eval-verification", "--checkpoint", str(ckpt), "--data", str(tmp_path), "--pairs",
               str(tmp_path / "pairs.txt"), "--json", "--device", "cpu"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    # expected scores by hand: correlation of the two images as the model sees them (16x16 gray, normalised)
    prep = Preprocessing(input_size=16, grayscale=True, mean=0.5, std=0.5)

    def feat(name: str, k: int) -> np.ndarray:
        img = read_images([tmp_path / "lfw" / name / f"{name}_{k:04d}.jpg"], grayscale=True, size=16)
        v = prep.normalize(img).flatten().double().numpy()
        return v - v.mean()

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    per = len(LFW_MATCHED) // (folds or 1)
    scores, same, fold = [], [], []
    for f in range(folds or 1):
        for n, a, b in LFW_MATCHED[f * per:(f + 1) * per]:
            scores.append(cos(feat(n, a), feat(n, b)))
            same.append(True)
            fold.append(f)
        for n1, a, n2, b in LFW_MISMATCHED[f * per:(f + 1) * per]:
            scores.append(cos(feat(n1, a), feat(n2, b)))
            same.append(False)
            fold.append(f)
    expected = evaluate_pairs(np.array(scores), np.array(same), np.array(fold))
    assert out["n_pairs"] == 8 and out["n_same"] == 4
    assert out["auc"] == pytest.approx(expected.auc)
    assert out["eer"] == pytest.approx(expected.eer)
    assert out["accuracy"] == pytest.approx(expected.accuracy)
    assert len(out["fold_accuracies"]) == (folds or 1)


def test_model_without_identity_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _identity_tree(tmp_path / "ids", n_ids=3, per_id=3)
    ckpt = _checkpoint(tmp_path / "m.pt", architecture=NO_ID)
    rc = main(["eval-verification", "--checkpoint", str(ckpt), "--data", str(tmp_path / "ids"), "--n-pairs", "20"])
    assert rc == 2
    assert "has no identity feature" in capsys.readouterr().err


def test_features_are_computed_as_the_app_computes_them_with_the_cards_tta(tmp_path: Path) -> None:
    """A card with flip TTA: verification (and so the calibrated threshold) sees the mirror-averaged
    feature that Predictor gives the app, not the single view."""
    from ferkit.evaluation.verification import identity_features
    from ferkit.inference import Predictor

    w = Weights(name="pixels", architecture=PIXELS, classes=["a", "b"], tta="flip",
                preprocessing=Preprocessing(input_size=16, grayscale=True, mean=0.5, std=0.5))
    ckpt = tmp_path / "m.pt"
    torch.save({"weights_meta": w.to_dict(), "modules": {"model": {}}}, ckpt)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 1, 16, 16), dtype=np.uint8))
    pred = Predictor(ckpt, device="cpu", engine="torch")
    app = pred.predict_tensor(images).identity
    single = identity_features(pred.torch_model, images, w.preprocessing, torch.device("cpu"))
    flip = identity_features(pred.torch_model, images, w.preprocessing, torch.device("cpu"), tta="flip")
    assert torch.allclose(flip, app, atol=1e-5) and not torch.allclose(single, app, atol=1e-3)
    mirrored = identity_features(pred.torch_model, images.flip(-1), w.preprocessing, torch.device("cpu"))
    assert torch.allclose(flip, 0.5 * (single + mirrored), atol=1e-6)
