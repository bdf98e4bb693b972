"""`ferkit models / predict / eval / export-weights` contracts: JSON schemas and one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ferkit.cli import main
from ferkit.data.ferplus import load_ferplus
from ferkit.evaluation.metrics import accuracy, confusion, per_class
from ferkit.models.weights import load_weights
from ferkit.paths import samples_dir
from tests.engine_support import train_tiny
from tests.fixtures.datasets import VOTE_CASES, make_ckplus48_tree, make_ferplus_tree


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    train_dir, valid_dir = root / "FER2013Train", root / "FER2013Valid"
    make_ferplus_tree(train_dir, n=36)
    make_ferplus_tree(valid_dir, n=24, start=100)
    return {"root": root, "train": train_dir, "valid": valid_dir,
            "ckpt": train_tiny(train_dir, root / "run", epochs=1)}


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERKIT_CACHE", "off")


def call(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc: int, err: str, command: str) -> str:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ferkit {command}: error: "), err
    return lines[0]


def test_metrics_by_hand() -> None:
    pred, target = [0, 1, 1, 2, 2, 2], [0, 1, 2, 2, 2, 0]
    cm = confusion(pred, target, 3)
    assert cm.tolist() == [[1, 0, 1], [0, 1, 0], [0, 1, 2]]
    assert accuracy(pred, target) == pytest.approx(4 / 6)
    pc = per_class(cm, ["a", "b", "c"])
    assert pc["a"] == {"accuracy": 0.5, "precision": 1.0, "f1": pytest.approx(2 / 3), "n": 2}
    assert pc["c"]["precision"] == pytest.approx(2 / 3) and pc["c"]["accuracy"] == pytest.approx(2 / 3)
    assert per_class(confusion([1], [1], 3), ["a", "b", "c"])["a"]["accuracy"] is None
    with pytest.raises(ValueError, match="outside"):
        confusion([3], [0], 3)


def test_eval_json_schema_and_numbers(run: dict[str, Path], capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    rc, out, _ = call(capsys, "eval", "--checkpoint", str(run["ckpt"]), "--data", str(run["valid"]), "--json",
                      "--report", str(tmp_path / "rep"))
    assert rc == 0
    res = json.loads(out)
    assert {"accuracy", "n", "per_class", "confusion", "vote_rule", "data"} <= set(res)
    assert res["vote_rule"] == "majority" and len(res["confusion"]) == 8
    # independent computation: the model on the normalised 48x48 gray images
    ds = load_ferplus(run["valid"], use_cache=False)
    model = load_weights(run["ckpt"], "cpu").model
    with torch.no_grad():
        pred = model((ds.images.float() / 255 - 0.5) / 0.5).logits.argmax(1)
    expected_n = 2 * sum(1 for _, maj, _ in VOTE_CASES if maj is not None)  # 24 rows = VOTE_CASES twice
    assert res["n"] == len(ds) == expected_n
    assert res["accuracy"] == pytest.approx(float((pred == ds.labels).float().mean()))
    assert np.array(res["confusion"]).sum() == expected_n and np.trace(np.array(res["confusion"])) == int((pred == ds.labels).sum())
    assert (tmp_path / "rep" / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    rows = (tmp_path / "rep" / "per_class.csv").read_text().splitlines()
    assert rows[0] == "class,n,accuracy,precision,f1" and rows[-1].startswith(f"(all),{expected_n},")
    # plurality keeps a different set of rows
    rc, out, _ = call(capsys, "eval", "--checkpoint", str(run["ckpt"]), "--data", str(run["valid"]), "--json",
                      "--vote", "plurality")
    n_plural = 2 * sum(1 for _, _, plu in VOTE_CASES if plu is not None)
    assert json.loads(out)["vote_rule"] == "plurality" and json.loads(out)["n"] == n_plural


def test_eval_on_ckplus48_maps_class_names(run: dict[str, Path], capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    make_ckplus48_tree(tmp_path)
    rc, out, err = call(capsys, "eval", "--checkpoint", str(run["ckpt"]), "--data", str(tmp_path), "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["layout"] == "ckplus48" and res["vote_rule"] is None
    assert set(res["per_class"]) <= set(res["classes"]) and "happiness" in res["classes"]


def test_eval_of_a_fold_model_counts_its_training_subjects_and_can_score_the_heldout_ones(
        run: dict[str, Path], capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """The shipped fersnet is a CK+ fold-0 model: S011 is one of its held-out subjects, S010 and
    S022 are not, so 9 of the fixture's 12 images are training faces and --heldout-only keeps 3."""
    make_ckplus48_tree(tmp_path)
    rc, out, err = call(capsys, "eval", "--weights", "fersnet", "--data", str(tmp_path), "--json", "--device", "cpu")
    assert rc == 0, err
    res = json.loads(out)
    assert res["n"] == 12 and res["seen_in_training"] == 9 and not res["heldout_only"]
    rc, out, err = call(capsys, "eval", "--weights", "fersnet", "--data", str(tmp_path), "--device", "cpu")
    assert rc == 0 and "9 of these 12 images show subjects fersnet trained on" in out
    rc, out, err = call(capsys, "eval", "--weights", "fersnet", "--data", str(tmp_path), "--json", "--heldout-only")
    res = json.loads(out)
    assert rc == 0 and res["n"] == 3 and res["seen_in_training"] == 0 and res["heldout_only"]
    # weights without held-out subjects (a FER+ run) cannot honour the option, and say so
    rc, _, err = call(capsys, "eval", "--checkpoint", str(run["ckpt"]), "--data", str(tmp_path), "--heldout-only")
    assert rc == 2 and "names no held-out subjects" in err


def test_train_kill_resume_then_eval_end_to_end(run: dict[str, Path], capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """tiny train -> (stop) -> resume -> eval: the resumed checkpoint evaluates like any weights."""
    out = tmp_path / "r"
    train_tiny(run["train"], out, epochs=1)
    from tests.engine_support import TinyRecipe
    from ferkit.training.engine import train

    train(TinyRecipe(run["train"], {}), out, epochs=2, device="cpu", resume=True, json_lines=False)
    rc, text, _ = call(capsys, "eval", "--checkpoint", str(out / "checkpoint.pt"), "--data", str(run["valid"]))
    assert rc == 0 and "accuracy" in text and text.count("\n") >= 4


def test_predict_json_schema(run: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    rc, out, _ = call(capsys, "predict", str(samples_dir() / "single_face.jpg"), "--checkpoint", str(run["ckpt"]),
                      "--device", "cpu", "--json")
    assert rc == 0
    res = json.loads(out)
    assert len(res) == 1 and res[0]["path"].endswith("single_face.jpg")
    faces = res[0]["faces"]
    assert len(faces) == 1 and len(faces[0]["box"]) == 4 and all(isinstance(v, int) for v in faces[0]["box"])
    assert abs(sum(faces[0]["scores"].values()) - 1) < 1e-6 and faces[0]["label"] in faces[0]["scores"]
    # a folder expands to its images; --whole-image gives one face per picture
    rc, out, _ = call(capsys, "predict", str(run["valid"]), "--checkpoint", str(run["ckpt"]), "--whole-image", "--json")
    res = json.loads(out)
    assert rc == 0 and len(res) == 24 and all(len(r["faces"]) == 1 for r in res)


def test_export_then_models_json(run: dict[str, Path], capsys: pytest.CaptureFixture, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    photo = str(samples_dir() / "single_face.jpg")
    monkeypatch.setenv("FERKIT_RESOURCES", str(tmp_path))
    rc, out, _ = call(capsys, "models", "--json")
    assert rc == 0 and json.loads(out) == []
    rc, out, err = call(capsys, "export-weights", "--checkpoint", str(run["ckpt"]), "--name", "tiny",
                        "--metric", "fixture_accuracy=0.25")
    assert rc == 0, err
    assert json.loads(out)["max_logit_diff"] < 1e-2
    rc, out, _ = call(capsys, "models", "--json")
    entries = json.loads(out)
    assert [e["name"] for e in entries] == ["tiny"]
    e = entries[0]
    assert {"name", "architecture", "classes", "input", "weights", "metrics"} <= set(e)
    assert e["architecture"] == "test-engine-tinycnn" and len(e["classes"]) == 8
    assert e["input"]["input_size"] == 48 and e["metrics"]["fixture_accuracy"] == 0.25 and Path(e["weights"]).is_file()
    rc, out, _ = call(capsys, "predict", photo, "--weights", "tiny", "--json")
    assert rc == 0 and len(json.loads(out)[0]["faces"]) == 1
    rc, out, _ = call(capsys, "models")
    assert rc == 0 and "tiny" in out and "test-engine-tinycnn" in out


def test_cli_errors_are_one_plain_line(run: dict[str, Path], capsys: pytest.CaptureFixture, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    ck = str(run["ckpt"])
    line = one_line_error(*call(capsys, "predict", str(tmp_path / "nope.jpg"), "--checkpoint", ck)[::2], "predict")
    assert "nope.jpg" in line
    (tmp_path / "bad.jpg").write_text("hello")
    line = one_line_error(*call(capsys, "predict", str(tmp_path / "bad.jpg"), "--checkpoint", ck)[::2], "predict")
    assert "bad.jpg" in line and "not an image" in line
    line = one_line_error(*call(capsys, "predict", str(samples_dir() / "single_face.jpg"), "--weights",
                                "no-such-weights")[::2], "predict")
    assert "no-such-weights" in line
    photo = str(samples_dir() / "single_face.jpg")
    monkeypatch.setenv("FERKIT_RESOURCES", str(tmp_path))
    line = one_line_error(*call(capsys, "predict", photo)[::2], "predict")
    assert "default weights 'tfe-jl' are not shipped" in line
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.txt").write_text("x")
    line = one_line_error(*call(capsys, "eval", "--checkpoint", ck, "--data", str(tmp_path / "flat"))[::2], "eval")
    assert "not a labelled expression data set" in line
    # person folders whose names start with S and hold an underscore (LFW's Saddam_Hussein) are not CK+
    (tmp_path / "lfw" / "Saddam_Hussein").mkdir(parents=True)
    (tmp_path / "lfw" / "Saddam_Hussein" / "Saddam_Hussein_0001.jpg").write_bytes(b"x")
    line = one_line_error(*call(capsys, "eval", "--checkpoint", ck, "--data", str(tmp_path / "lfw"))[::2], "eval")
    assert "not a labelled expression data set" in line
    line = one_line_error(*call(capsys, "eval", "--checkpoint", ck, "--data", str(tmp_path / "flat" / "x.txt"))[::2],
                          "eval")
    assert "is a file, not a data folder" in line
    line = one_line_error(*call(capsys, "eval", "--checkpoint", str(tmp_path / "flat" / "x.txt"), "--data",
                                str(run["valid"]))[::2], "eval")
    assert "is not weights ferkit can read" in line
    line = one_line_error(*call(capsys, "eval", "--checkpoint", ck, "--data", str(run["root"]))[::2], "eval")
    assert "FER+ root" in line and "FER2013Valid" in line
    # a CK+ recipe pointed at FER+ says which data set it needs, not that a FER+ file name is wrong
    line = one_line_error(*call(capsys, "train", "tfe-jl/resnet12-ckplus", "--data", str(run["root"]),
                                "--out", str(tmp_path / "ck"))[::2], "train")
    assert "this is a FER+ folder, but this needs CK+48" in line
    line = one_line_error(*call(capsys, "eval", "--checkpoint", str(tmp_path / "none.pt"), "--data",
                                str(run["valid"]))[::2], "eval")
    assert "none.pt" in line
    (tmp_path / "junk.pt").write_bytes(b"junk")
    line = one_line_error(*call(capsys, "eval", "--checkpoint", str(tmp_path / "junk.pt"), "--data",
                                str(run["valid"]))[::2], "eval")
    assert "junk.pt" in line
    line = one_line_error(*call(capsys, "train", "no-such-recipe", "--data", ".", "--out", str(tmp_path))[::2], "train")
    assert "unknown recipe" in line


def test_predict_with_the_shipped_default_weights(capsys: pytest.CaptureFixture) -> None:
    """The issue's acceptance check: `ferkit predict <face photo> --json` finds the face, 8 scores sum to 1."""
    from ferkit.inference import DEFAULT_WEIGHTS
    from ferkit.models.weights import list_weights

    if DEFAULT_WEIGHTS not in list_weights():
        pytest.skip(f"default weights {DEFAULT_WEIGHTS!r} not shipped yet")
    rc, out, err = call(capsys, "predict", str(samples_dir() / "single_face.jpg"), "--json")
    assert rc == 0, err
    faces = json.loads(out)[0]["faces"]
    assert len(faces) == 1 and len(faces[0]["scores"]) == 8
    assert abs(sum(faces[0]["scores"].values()) - 1) < 1e-6


def test_eval_on_a_prepared_folder_matches_the_source(run: dict[str, Path], capsys: pytest.CaptureFixture,
                                                     tmp_path: Path) -> None:
    """`ferkit prepare` output (no detection: whole 48x48 crops) evaluates like the FER+ folder itself."""
    from ferkit.data.prepared import prepare_dataset
    from ferkit.data.registry import open_index
    from ferkit.models.weights import Preprocessing

    prepare_dataset(open_index("ferplus", run["valid"]), tmp_path / "prep", Preprocessing(), detect=False,
                    progress=False)
    rc, out, err = call(capsys, "eval", "--checkpoint", str(run["ckpt"]), "--data", str(tmp_path / "prep"), "--json")
    assert rc == 0, err
    prepared = json.loads(out)
    rc, out, _ = call(capsys, "eval", "--checkpoint", str(run["ckpt"]), "--data", str(run["valid"]), "--json")
    direct = json.loads(out)
    assert prepared["layout"] == "prepared" and prepared["n"] == direct["n"]
    assert prepared["confusion"] == direct["confusion"]
