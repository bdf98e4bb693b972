"""Video analysis (`ferkit predict VIDEO`): rows per frame and face, tracks, CSV, plot, enrolment,
and damaged files, on clips generated from a shipped sample photo."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferkit.cli import main
from ferkit.paths import samples_dir

pytest.importorskip("mediapipe")

FRAMES = 20


def _write_clip(path: Path, frames: int = FRAMES) -> Path:
    img = cv2.imread(str(samples_dir() / "single_face.jpg"))
    img = cv2.resize(img, (320, 326))
    fourcc = "MJPG" if path.suffix == ".avi" else "mp4v"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (img.shape[1], img.shape[0]))
    for i in range(frames):
        writer.write(np.roll(img, 2 * i, axis=1))  # the face drifts: the tracker must follow it
    writer.release()
    return path


def _truncate(src: Path, dst: Path, fraction: float = 0.4) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_clip(tmp_path_factory.mktemp("video") / "clip.avi")


def test_every_frame_gives_one_tracked_row(clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_csv, out_png = tmp_path / "rows.csv", tmp_path / "timeline.png"
    rc = main(["predict", str(clip), "--device", "cpu", "--csv", str(out_csv), "--plot", str(out_png),
               "--enrol", f"me={samples_dir() / 'single_face.jpg'}"])
    assert rc == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == FRAMES and [int(r["frame"]) for r in rows] == list(range(FRAMES))
    assert {r["track"] for r in rows} == {"1"}  # one person, one id throughout
    assert float(rows[3]["time_s"]) == pytest.approx(0.3)
    classes = [c for c in rows[0] if c not in {"time_s", "frame", "track", "x", "y", "w", "h", "label",
                                              "similarity_me"}]
    assert abs(sum(float(rows[0][c]) for c in classes) - 1.0) < 1e-4
    assert all(r["label"] == max(classes, key=lambda c: float(r[c])) for r in rows)
    assert float(rows[0]["similarity_me"]) > 0.9  # the enrolled photo is this face
    assert out_png.stat().st_size > 10_000 and cv2.imread(str(out_png)) is not None
    assert "track 1" in capsys.readouterr().out


def test_every_n_and_json(clip: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(clip), "--device", "cpu", "--every", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["frame"] for r in out["rows"]] == [0, 5, 10, 15]
    assert out["frames_read"] == FRAMES and out["problem"] is None


def test_detect_every_n_follows_the_face_between_detections(clip: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(clip), "--device", "cpu", "--detect-every", "5", "--json"]) == 0
    fast = json.loads(capsys.readouterr().out)
    assert main(["predict", str(clip), "--device", "cpu", "--json"]) == 0
    every = json.loads(capsys.readouterr().out)
    assert [r["frame"] for r in fast["rows"]] == list(range(FRAMES)) and {r["track"] for r in fast["rows"]} == {1}
    for a, b in zip(fast["rows"], every["rows"]):  # the followed box stays on the detected face
        ax, ay, aw, ah = a["box"]
        bx, by, bw, bh = b["box"]
        assert abs((ax + aw / 2) - (bx + bw / 2)) < 0.15 * bw and abs((ay + ah / 2) - (by + bh / 2)) < 0.15 * bh
    assert main(["predict", str(samples_dir() / "single_face.jpg"), "--detect-every", "3"]) == 2  # videos only


def test_truncated_video_keeps_rows_and_says_where_it_broke(clip: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    broken = _truncate(clip, tmp_path / "broken.avi")
    out_csv = tmp_path / "rows.csv"
    rc = main(["predict", str(broken), "--device", "cpu", "--csv", str(out_csv)])
    err = capsys.readouterr().err
    assert rc == 3 and "ends early at frame" in err and f"of {FRAMES}" in err
    rows = list(csv.DictReader(out_csv.open()))
    assert 0 < len(rows) < FRAMES  # what could be read is kept


def test_unreadable_video_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mp4 = _write_clip(tmp_path / "clip.mp4")
    broken = _truncate(mp4, tmp_path / "broken.mp4")  # mp4 keeps its index at the end: nothing decodes
    assert main(["predict", str(broken), "--device", "cpu"]) == 2
    assert "cannot be opened as a video" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nope.mp4")]) == 2
    assert main(["predict", str(samples_dir() / "single_face.jpg"), "--csv", str(tmp_path / "x.csv")]) == 2
