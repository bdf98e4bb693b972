"""Bad command lines end in one plain line naming the option and its range, before anything runs."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ferkit.cli import main


def parse_error(capsys: pytest.CaptureFixture, *argv: str) -> str:
    with pytest.raises(SystemExit) as stop:
        main(list(argv))
    assert stop.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_ranged_argument_types_refuse_values_outside_their_range() -> None:
    from ferkit.utils.argtypes import non_negative_float, positive_float, positive_int, probability

    assert positive_int("3") == 3 and positive_float("1e-3") == 1e-3 and probability("1") == 1.0
    assert non_negative_float("0") == 0.0
    for parse, bad in ((positive_int, "0"), (positive_int, "2.5"), (positive_float, "0"), (positive_float, "nan"),
                       (non_negative_float, "-1"), (probability, "1.5"), (probability, "x")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)
    from ferkit.utils.argtypes import fold_count, probability_below_one

    for parse, bad in ((positive_float, "inf"), (fold_count, "1"), (probability_below_one, "1")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)
    assert fold_count("2") == 2 and probability_below_one("0.01") == 0.01


def test_bad_numbers_and_devices_are_refused_before_a_run_folder_exists(capsys: pytest.CaptureFixture,
                                                                        tmp_path: Path) -> None:
    out = tmp_path / "run"
    data = str(tmp_path)  # never read: parsing fails first
    assert "argument --lr: must be > 0, got -1" in parse_error(
        capsys, "train", "tfe-jl/resnet12-ckplus", "--data", data, "--out", str(out), "--lr", "-1")
    assert "argument --batch-size: must be >= 1, got 0" in parse_error(
        capsys, "train", "tfe-jl/resnet12-ckplus", "--data", data, "--out", str(out), "--batch-size", "0")
    assert "argument --epochs: must be >= 1, got 0" in parse_error(
        capsys, "cv", "tfe-jl/resnet12-ckplus", "--data", data, "--out", str(out), "--epochs", "0")
    assert "argument --device: 'gpu' is not a device ferkit runs on" in parse_error(
        capsys, "train", "tfe-jl/resnet12-ckplus", "--data", data, "--out", str(out), "--device", "gpu")
    assert not out.exists()
    assert "argument --max-faces: must be >= 1, got 0" in parse_error(capsys, "predict", "x.jpg", "--max-faces", "0")
    assert "argument --scale: must be >= 1, got 0" in parse_error(
        capsys, "synthesize", "x.jpg", "--target", "all", "--out", "o.png", "--scale", "0")
    assert "use auto, cpu, cuda or cuda:N" in parse_error(capsys, "predict", "x.jpg", "--device", "tpu")


def test_version_flag_and_a_closed_pipe(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("ferkit ")
    # `ferkit models | head -1`: the reader leaves early; no BrokenPipeError traceback
    proc = subprocess.run(f"{sys.executable} -m ferkit.cli models | head -1", shell=True, capture_output=True, text=True)
    assert proc.stdout.strip() and "Traceback" not in proc.stderr, proc.stderr


def test_pictures_are_written_in_the_format_their_name_says(tmp_path: Path) -> None:
    from ferkit.errors import UsageError
    from ferkit.evaluation.synthesis import write_image

    rgb = np.zeros((8, 8, 3), np.uint8)
    write_image(tmp_path / "a.jpg", rgb)
    write_image(tmp_path / "a.png", rgb)
    assert (tmp_path / "a.jpg").read_bytes()[:2] == b"\xff\xd8" and (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(UsageError, match="picture format"):
        write_image(tmp_path / "a.txt", rgb)


def test_a_file_that_is_not_onnx_is_named_as_such(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from ferkit.errors import UsageError
    from ferkit.export.onnx import OnnxModel

    fake = tmp_path / "notes.onnx"
    fake.write_text("not a model")
    with pytest.raises(UsageError, match="onnxruntime cannot load"):
        OnnxModel(fake)


def test_predict_refuses_an_identity_network(capsys: pytest.CaptureFixture) -> None:
    from ferkit.paths import samples_dir

    rc = main(["predict", str(samples_dir() / "single_face.jpg"), "--weights", "deepid"])
    err = capsys.readouterr().err
    assert rc == 2 and "deepid is not an expression classifier" in err and "tfe-jl" in err


def test_synthesize_takes_a_folder_and_names_a_video_as_one(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    import shutil

    from ferkit.paths import samples_dir

    folder = tmp_path / "pics"
    folder.mkdir()
    shutil.copy(samples_dir() / "single_face.jpg", folder / "a.jpg")
    shutil.copy(samples_dir() / "astronaut.png", folder / "b.png")
    import cv2

    cv2.imwrite(str(folder / "c_no_face.png"), np.full((64, 64, 3), 128, np.uint8))  # skipped, not fatal
    assert main(["synthesize", str(folder), "--target", "happiness", "--out", str(tmp_path / "o.png")]) == 0
    assert "2 faces" in capsys.readouterr().out
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    assert main(["synthesize", str(video), "--target", "all", "--out", str(tmp_path / "v.png")]) == 2
    assert "is a video, not a picture" in capsys.readouterr().err


def test_bench_names_both_kinds_of_model_it_takes() -> None:
    from ferkit.bench.models import bench_models_list
    from ferkit.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="neither shipped weights .*tfe-jl.* nor an architecture .*resnet12_fer"):
        bench_models_list(["nosuch"])
