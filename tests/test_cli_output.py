"""What the command line shows a user (issue 22 item 9): a quiet stderr, one class spelling,
faces numbered from 1, a timeline legend that covers no curve."""
from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from ferkit.cli import quiet

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "resources" / "samples"
NATIVE = re.compile(r"^(W0000|I0000|INFO: |WARNING: All log messages)", re.M)


def ferkit(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "ferkit.cli", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600)


# ---- the filter --------------------------------------------------------------------------------------
def test_filter_drops_native_info_and_warnings_keeps_the_rest() -> None:
    r, w = os.pipe()
    out_r, out_w = os.pipe()
    t = threading.Thread(target=quiet._forward, args=(r, out_w))
    t.start()
    os.write(w, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
                b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
                b"W0000 00:00:1796630767.352751    4191 inference_feedback_manager.cc:114] Feedback manager\n"
                b"I1207 07:50:01.123456  99 calculator_graph.cc:10] started\n"
                b"E0000 00:00:1796630767.4    4191 gl_context.cc:1] a real error\n"
                b"[mov,mp4,m4a,3gp,3g2,mj2 @ 0x5585c0db4180] stream 0, offset 0xa62a: partial file\n"
                b"[h264 @ 0x5585c0e6")  # an FFmpeg line arriving in two writes
    os.write(w, b"1400] Error splitting the input into NAL units.\n"
                b"ferkit predict: error: x.png: no such file\n")
    os.write(w, b"\rframes 1/10")  # a progress bar without a newline is shown at once
    os.write(w, b"\rframes 10/10\n")
    os.close(w)
    t.join(5)
    os.close(out_w)
    got = b""
    while chunk := os.read(out_r, 65536):
        got += chunk
    os.close(r)
    os.close(out_r)
    text = got.decode()
    assert "TensorFlow Lite" not in text and "InitializeLog" not in text and "Feedback manager" not in text
    assert "started" not in text and "partial file" not in text and "NAL units" not in text
    assert "a real error" in text and "ferkit predict: error: x.png: no such file" in text
    assert "\rframes 1/10\rframes 10/10\n" in text


@pytest.mark.skipif(not (SAMPLES / "single_face.jpg").is_file(), reason="sample image not shipped")
def test_predict_stderr_is_quiet_unless_verbose() -> None:
    quiet_run = ferkit("predict", str(SAMPLES / "single_face.jpg"))
    assert quiet_run.returncode == 0, quiet_run.stderr
    assert "face 1" in quiet_run.stdout
    assert not NATIVE.search(quiet_run.stderr), quiet_run.stderr
    loud = ferkit("predict", str(SAMPLES / "single_face.jpg"), "--verbose")
    assert loud.returncode == 0 and loud.stdout == quiet_run.stdout
    if not NATIVE.search(loud.stderr):
        pytest.skip("this mediapipe build logs nothing: nothing was hidden")
    # the error of a bad file among good ones still reaches the user
    bad = ferkit("predict", str(SAMPLES / "single_face.jpg"), str(REPO / "missing.jpg"))
    assert bad.returncode == 2 and "missing.jpg" in bad.stderr and not NATIVE.search(bad.stderr)


@pytest.mark.parametrize("command", [
    ("eval-synthesis", "--weights", "fersnet", "--identity-weights", "none", "--json", "--photos",
     str(SAMPLES / "single_face.jpg")),
    ("synthesize", str(SAMPLES / "single_face.jpg"), "--weights", "fersnet", "--target", "happiness")])
def test_every_command_that_detects_faces_is_quiet(command: tuple[str, ...], tmp_path: Path) -> None:
    """Not only predict: the synthesis commands run mediapipe too (prepare and eval-verification
    --align share the same run_quietly wrapper)."""
    extra = ("--out", str(tmp_path / "grid.png")) if command[0] == "synthesize" else ()
    run = ferkit(*command, *extra, "--threads", "1") if command[0] == "eval-synthesis" else ferkit(*command, *extra)
    assert run.returncode == 0, run.stderr
    assert not NATIVE.search(run.stderr), run.stderr

# ---- one spelling -----------------------------------------------------------------------------------
def test_synthesize_labels_and_target_use_the_canonical_spelling(monkeypatch, tmp_path: Path) -> None:
    """FERSNet's card says "happy" (CK+); the grid says "happiness" like the app, and both spellings
    name the target."""
    import ferkit.evaluation.synthesis as synthesis
    from ferkit.cli import main

    seen: list[list[str]] = []
    real = synthesis.synthesis_grid

    def spy(src, syn, labels, scale=3):
        seen.append(list(labels))
        return real(src, syn, labels, scale=scale)

    monkeypatch.setattr(synthesis, "synthesis_grid", spy)
    image = SAMPLES / "single_face.jpg"
    if not image.is_file():
        pytest.skip("sample image not shipped")
    assert main(["synthesize", str(image), "--out", str(tmp_path / "all.png")]) == 0
    assert "happiness" in seen[0] and "happy" not in seen[0]
    for spelling in ("happy", "happiness"):
        assert main(["synthesize", str(image), "--target", spelling, "--out", str(tmp_path / "h.png")]) == 0
        assert seen[-1] == ["happiness"]


def test_video_rows_use_the_canonical_spelling(tmp_path: Path) -> None:
    """A CK+ model ("happy") analysing a video: CSV columns and labels read "happiness"."""
    from ferkit.video import analyse_video

    video = SAMPLES / "expressions_pexels_640x360.mp4"
    if not video.is_file():
        pytest.skip("sample video not shipped")

    class CkPredictor:  # the Predictor interface analyse_video uses, with CK+ class names
        classes = ["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"]
        max_faces, min_confidence = 1, 0.5

        def predict_image(self, rgb, whole_image=False, pipeline=None):
            from types import SimpleNamespace

            scores = dict(zip(self.classes, [0.1, 0.0, 0.0, 0.0, 0.8, 0.1, 0.0]))
            face = SimpleNamespace(box=(1, 2, 3, 4), label="happy", scores=scores, identity=None)
            return SimpleNamespace(faces=[face])

    analysis = analyse_video(video, CkPredictor(), every=100)
    rows = list(csv.DictReader(io.StringIO(analysis.to_csv())))
    assert "happiness" in rows[0] and "happy" not in rows[0]
    assert {r["label"] for r in rows} == {"happiness"} and rows[0]["track"] == "1"


# ---- numbering and the plot ----------------------------------------------------------------------------
def test_exported_faces_are_numbered_as_the_ui_shows_them() -> None:
    from app.core.analyzer import FrameResult, TrackedFace
    from app.core.export import result_records

    faces = [TrackedFace(i, i + 1, (1, 2, 3), (10 * i, 0, 5, 5), 0.9) for i in range(3)]  # a still: #1, #2, #3
    records = result_records("x.jpg", FrameResult(np.zeros((4, 4, 3), np.uint8), faces, None, {}))
    assert [r["face"] for r in records] == [1, 2, 3]
    whole = TrackedFace(0, 0, (1, 2, 3), (0, 0, 4, 4), float("nan"), whole_image=True)
    assert result_records("y.jpg", FrameResult(np.zeros((4, 4, 3), np.uint8), [whole], None, {}))[0]["face"] == 1


def test_timeline_legend_sits_outside_the_axes() -> None:
    from ferkit.video import VideoAnalysis, VideoRow, timeline_figure

    classes = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]
    rows = [VideoRow(t / 2, t, 1, (0, 0, 1, 1), "happiness", {c: (0.9 if c == "happiness" else 0.01) for c in classes})
            for t in range(40)]
    fig = timeline_figure(VideoAnalysis("v.mp4", 24.0, 40, 40, 1, classes, rows))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert legend is not None and len(legend.get_texts()) == len(classes)
    box, axes_box = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
    assert box.x0 >= axes_box.x1  # right of the plot area: no curve underneath


def test_models_table_is_one_short_line_per_card(capsys) -> None:
    from ferkit.cli import main

    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines[1:] if line and not line.startswith("*")}
    assert "tfe-jl *" in rows["tfe-jl"] and " expression " in rows["tfe-jl"] and " identity " in rows["deepid"]
    assert "ckplus48_10fold_accuracy" in rows["fersnet"] and max(len(r) for r in rows.values()) < 120
    assert main(["models", "--metrics"]) == 0
    assert "    val_loss " in capsys.readouterr().out


def test_progress_waits_for_warm_up_before_a_rate_and_names_its_unit() -> None:
    import io

    from ferkit.data.prepared import Progress

    out = io.StringIO()
    bar = Progress(100, "frames", stream=out, unit="frames")
    bar.update(1, force=True)  # right after start: warm-up, no rate yet
    bar.update(100, force=True)  # the end always says the rate
    first, last = out.getvalue().splitlines()
    assert "measuring speed" in first and "eta" not in first
    assert " frames/s eta 0:00" in last and "img/s" not in last
