"""`ferkit prepare`: same crops as live inference, summary counts, interruption and resume."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from ferkit.cli import main as cli_main
from ferkit.data.errors import DataError
from ferkit.data.prepared import chunk_path, load_prepared, prepare_dataset
from ferkit.data.registry import open_index
from ferkit.face.pipeline import FacePipeline
from ferkit.models.weights import Preprocessing
from ferkit.paths import samples_dir
from tests.fixtures.datasets import make_ckplus48_tree, make_face_frames_tree


class Interrupt(Exception):
    pass


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FERKIT_CACHE", str(tmp_path / "cache"))


def test_prepare_interrupted_then_resumed(tmp_path):
    make_face_frames_tree(tmp_path / "sfew", samples_dir())
    index = open_index("sfew", tmp_path / "sfew", split="Train")
    pre = Preprocessing(input_size=48, grayscale=True, alignment="fer2013")
    dst = tmp_path / "out"

    def stop_after_second(i: int) -> None:
        if i == 1:
            raise Interrupt
    with pytest.raises(Interrupt):
        prepare_dataset(index, dst, pre, chunk_size=1, progress=False, on_chunk=stop_after_second)
    assert chunk_path(dst, 0).is_file() and chunk_path(dst, 1).is_file() and not chunk_path(dst, 2).exists()
    assert not any(p.name.endswith(".tmp") for p in dst.iterdir())
    with pytest.raises(DataError, match="incomplete"):
        load_prepared(dst)
    before = chunk_path(dst, 0).stat().st_mtime_ns
    done = []
    summary = prepare_dataset(index, dst, pre, chunk_size=1, progress=False, on_chunk=done.append)
    assert done == [2, 3]  # only the missing chunks were processed
    assert chunk_path(dst, 0).stat().st_mtime_ns == before
    assert (summary["found"], summary["no_face"], summary["unreadable"], summary["kept"]) == (2, 1, 1, 2)
    assert summary["no_face_files"][0].endswith("c_blank.png")
    assert summary["unreadable_files"][0].endswith("d_corrupt.jpg")
    ds = load_prepared(dst)
    assert len(ds) == 2 and ds.classes[ds.labels[0]] == "Happy" and ds.images.shape == (2, 1, 48, 48)
    # the prepared crop is exactly what live inference makes of the same photo
    rgb = cv2.cvtColor(cv2.imread(str(samples_dir() / "single_face.jpg")), cv2.COLOR_BGR2RGB)
    with FacePipeline() as live:
        (face,) = live.process(rgb, pre)
    assert np.array_equal(ds.images[0].numpy().transpose(1, 2, 0), face.crop)
    # a different preparation in the same folder is refused
    with pytest.raises(DataError, match="different preparation"):
        prepare_dataset(index, dst, Preprocessing(input_size=64), chunk_size=1, progress=False)


def test_prepare_cli_on_cropped_fixture(tmp_path, capsys):
    made = make_ckplus48_tree(tmp_path / "ck")  # noise crops: no face -> whole image kept (cropped data)
    rc = cli_main(["prepare", "ckplus48", str(tmp_path / "ck"), str(tmp_path / "out"), "--json", "--quiet",
                   "--chunk-size", "5", "--size", "32"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["total"] == len(made) and summary["kept"] == len(made) and summary["whole_image"] == len(made)
    ds = load_prepared(tmp_path / "out")
    assert ds.images.shape == (len(made), 1, 32, 32) and ds.num_subjects() == 3
    assert ds.meta["preprocessing"]["alignment"] == "ckplus48"
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["n_chunks"] == 3 and manifest["format"] == "ferkit-prepared"
    # no detection: whole images, resized
    rc = cli_main(["prepare", "ckplus48", str(tmp_path / "ck"), str(tmp_path / "raw"), "--detect", "no", "--quiet"])
    assert rc == 0 and len(load_prepared(tmp_path / "raw")) == len(made)


def test_prepare_cli_user_errors(tmp_path, capsys):
    assert cli_main(["prepare", "ckplus48", str(tmp_path / "nothing"), str(tmp_path / "out"), "--quiet"]) == 2
    assert "nothing" in capsys.readouterr().err
    make_ckplus48_tree(tmp_path / "ck")
    assert cli_main(["prepare", "ckplus48", str(tmp_path / "ck"), str(tmp_path / "o"), "--vote", "majority"]) == 2
    assert cli_main(["prepare", "ckplus48", str(tmp_path / "ck"), str(tmp_path / "o"), "--alignment", "zzz"]) == 2


def test_spine_loaders_read_prepared_folders(tmp_path):
    from ferkit.data.ckplus import load_ckplus48
    from ferkit.data.ferplus import load_ferplus
    from tests.fixtures.datasets import make_ferplus_tree

    make_ckplus48_tree(tmp_path / "ck")
    assert cli_main(["prepare", "ckplus48", str(tmp_path / "ck"), str(tmp_path / "ckp"), "--detect", "no",
                     "--quiet", "--size", "40"]) == 0
    ds = load_ckplus48(tmp_path / "ckp", size=48)
    assert ds.images.shape == (12, 1, 48, 48) and ds.num_subjects() == 3
    assert load_ckplus48(tmp_path / "ckp", grayscale=False).images.shape == (12, 3, 40, 40)
    make_ferplus_tree(tmp_path / "FER2013Train")
    assert cli_main(["prepare", "ferplus", str(tmp_path / "FER2013Train"), str(tmp_path / "fp"), "--detect", "no",
                     "--quiet", "--vote", "plurality"]) == 0
    assert len(load_ferplus(tmp_path / "fp", vote="plurality")) == len(load_ferplus(tmp_path / "FER2013Train",
                                                                                     vote="plurality"))
    with pytest.raises(DataError, match="plurality"):
        load_ferplus(tmp_path / "fp", vote="majority")
