"""Predictor, image reading and weights export on a checkpoint the tiny test recipe trains."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ferkit.data.ferplus import load_ferplus
from ferkit.data.images import ImageReadError, expand_image_paths, read_image
from ferkit.inference import Predictor, to_model_input
from ferkit.models.weights import Preprocessing, load_weights
from ferkit.paths import samples_dir
from ferkit.training.export import export_weights
from tests.engine_support import train_tiny
from tests.fixtures.datasets import make_ferplus_tree


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("inf")
    data = root / "FER2013Train"
    make_ferplus_tree(data, n=36)
    return data, train_tiny(data, root / "run", epochs=1)


def test_read_image_rgb_gray_and_clear_errors(tmp_path: Path) -> None:
    import cv2

    gray = np.arange(48 * 40, dtype=np.uint16).reshape(40, 48).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    rgb = read_image(tmp_path / "g.png")
    assert rgb.shape == (40, 48, 3) and rgb.dtype == np.uint8 and (rgb[..., 0] == gray).all()
    (tmp_path / "notes.jpg").write_text("this is not a picture")
    with pytest.raises(ImageReadError, match="notes.jpg: not an image"):
        read_image(tmp_path / "notes.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty file"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "sub").mkdir()
    with pytest.raises(ImageReadError, match="folder holds no image"):
        expand_image_paths([tmp_path / "sub"])
    assert expand_image_paths([tmp_path]) == sorted([tmp_path / "empty.png", tmp_path / "g.png", tmp_path / "notes.jpg"])
    with pytest.raises(ImageReadError, match="sub: is a folder, not an image"):
        read_image(tmp_path / "sub")
    assert (read_image(tmp_path / "g.png", grayscale=True) == gray).all()


def test_one_image_reader_for_datasets_too(tmp_path: Path) -> None:
    """Dataset readers decode with the same read_image: a bad file is a DataError naming it, with what to do."""
    import pickle

    from ferkit.data.errors import DataError
    from ferkit.data.images import DATASET_FILE_HINT, read_images

    with pytest.raises(DataError, match=r"missing\.png: no such file \(restore or re-extract") as err:
        read_images([tmp_path / "missing.png"], grayscale=True)
    assert isinstance(err.value, ImageReadError) and err.value.hint == DATASET_FILE_HINT
    again = pickle.loads(pickle.dumps(err.value))  # arrives whole from a worker process
    assert type(again) is ImageReadError and str(again) == str(err.value)


def test_to_model_input_converts_channels_and_size() -> None:
    prep = Preprocessing(input_size=32, grayscale=True, mean=0.5, std=0.5)
    rgb = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
    rgb[:, 0] = 255  # pure red -> luma 0.299
    x = to_model_input(rgb, prep)
    assert x.shape == (2, 1, 32, 32)
    assert torch.allclose(x, torch.full_like(x, (0.299 - 0.5) / 0.5), atol=1e-5)
    gray = torch.full((1, 1, 48, 48), 51, dtype=torch.uint8)
    y = to_model_input(gray, Preprocessing(input_size=48, grayscale=False, mean=0.0, std=1.0))
    assert y.shape == (1, 3, 48, 48) and torch.allclose(y, torch.full_like(y, 0.2))


def test_predict_tensor_matches_the_model(trained: tuple[Path, Path]) -> None:
    data, ckpt = trained
    pred = Predictor(ckpt, device="cpu", engine="torch")
    ds = load_ferplus(data, use_cache=False)
    out = pred.predict_tensor(ds.images[:5])
    assert out.logits.shape == (5, 8) and out.identity is not None and out.identity.shape == (5, 16)
    with torch.no_grad():
        ref = pred.model(pred.preprocessing.normalize(ds.images[:5])).logits
    assert torch.allclose(out.logits, ref)
    assert not torch.is_inference_mode_enabled()


def test_whole_image_prediction_equals_the_eval_path(trained: tuple[Path, Path]) -> None:
    """A 48x48 FER+ PNG scored with --whole-image gives exactly the tensor path's probabilities."""
    data, ckpt = trained
    pred = Predictor(ckpt, device="cpu")
    ds = load_ferplus(data, use_cache=False)
    probs = pred.probabilities(ds.images[:3])
    for i in range(3):
        res = pred.predict_file(ds.paths[i], whole_image=True)
        assert len(res.faces) == 1 and not res.faces[0].detected
        face = res.faces[0]
        got = np.array([face.scores[c] for c in pred.classes])
        assert np.allclose(got, probs[i], atol=1e-6) and abs(got.sum() - 1) < 1e-6
        assert face.box == (0, 0, 48, 48) and face.label == pred.classes[int(probs[i].argmax())]
        assert face.crop.shape == (48, 48, 1)


def test_predict_finds_the_face_in_the_sample_photo(trained: tuple[Path, Path]) -> None:
    _, ckpt = trained
    with Predictor(ckpt, device="cpu") as pred:
        res = pred.predict_file(samples_dir() / "single_face.jpg")
        assert len(res.faces) == 1, res
        face = res.faces[0]
        x, y, w, h = face.box
        W, H = res.image_size
        assert w > 20 and h > 20 and 0 <= x + w / 2 <= W and 0 <= y + h / 2 <= H
        assert abs(sum(face.scores.values()) - 1) < 1e-6 and len(face.scores) == 8
        assert face.detection_score > 0.5 and face.identity is not None and face.crop.shape == (48, 48, 1)
        # no face: an empty result, not an exception; the fallback scores the whole image
        blank = np.full((120, 160, 3), 128, np.uint8)
        assert pred.predict_image(blank).no_face
        fb = pred.predict_image(blank, fallback_whole_image=True)
        assert len(fb.faces) == 1 and not fb.faces[0].detected and fb.faces[0].box == (20, 0, 120, 120)


def test_multi_face_frame_runs_one_forward(trained: tuple[Path, Path]) -> None:
    _, ckpt = trained
    with Predictor(ckpt, device="cpu", engine="torch") as pred:
        calls = []
        pred.model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
        res = pred.predict_file(samples_dir() / "multi_face.jpg")
        assert len(res.faces) >= 2 and calls == [len(res.faces)]


def test_export_round_trip_keeps_buffers_and_logits(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, ckpt = trained
    info = export_weights(ckpt, "tiny-export", out_dir=tmp_path, metrics={"fixture_accuracy": 0.5})
    sd = torch.load(tmp_path / "tiny-export.pt", weights_only=True)
    assert sd["conv1.weight"].dtype == torch.float16 and sd["fc.bias"].dtype == torch.float16
    assert sd["bn1.running_var"].dtype == torch.float32 and sd["bn1.num_batches_tracked"].dtype == torch.int64
    orig = torch.load(ckpt, weights_only=False)["modules"]["model"]
    assert torch.equal(sd["bn1.running_var"], orig["bn1.running_var"])
    assert torch.equal(sd["bn1.num_batches_tracked"], orig["bn1.num_batches_tracked"])
    card = json.loads((tmp_path / "tiny-export.json").read_text())
    assert card["name"] == "tiny-export" and card["file"] == "tiny-export.pt"
    assert card["metrics"]["fixture_accuracy"] == 0.5 and "val_accuracy" in card["metrics"]
    assert (tmp_path / "tiny-export.md").read_text().startswith("# tiny-export")
    assert info["max_logit_diff"] < 1e-2
    a, b = load_weights(tmp_path / "tiny-export.json", "cpu").model, load_weights(ckpt, "cpu").model
    x = torch.randn(3, 1, 48, 48)
    with torch.no_grad():
        assert torch.allclose(a(x).logits, b(x).logits, atol=2e-2)
    with pytest.raises(ValueError, match="invalid weights name"):
        export_weights(ckpt, "../evil", out_dir=tmp_path)
