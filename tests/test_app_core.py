"""The app's Qt-free logic: tracking, smoothing, enrolment store, exports, job progress, gates."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")

from app.core.enrolment import EnrolmentStore, cosine  # noqa: E402
from app.core.explain import colormap_lut, gate_map, overlay, parse_gate_keys  # noqa: E402
from app.core.jobs import JobState, cli_command, train_args  # noqa: E402
from ferkit.face.tracking import FaceTracker, Smoother, iou  # noqa: E402


def test_iou_of_known_boxes() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0


def test_tracker_keeps_ids_across_frames_and_faces_swapping_order() -> None:
    tr = FaceTracker()
    a, b = (10, 10, 50, 50), (200, 20, 60, 60)
    t1 = tr.update([a, b])
    ids = [t.id for t in t1]
    assert ids == [1, 2]
    # next frame: both moved a little and the detector lists them in the other order
    t2 = tr.update([(205, 22, 60, 60), (14, 12, 50, 50)])
    assert [t.id for t in t2] == [2, 1]
    assert t2[0].colour != t2[1].colour
    # fast motion: no overlap, but the centroid is close -> same id
    t3 = tr.update([(40, 12, 50, 50)])
    assert t3[0].id == 1


def test_tracker_drops_lost_tracks_and_gives_a_new_id() -> None:
    tr = FaceTracker(max_missed=2)
    tr.update([(0, 0, 20, 20)])
    for _ in range(3):
        tr.update([])
    assert tr.update([(0, 0, 20, 20)])[0].id == 2


def test_ema_and_window_smoothing_follow_their_equations() -> None:
    xs = [np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([0.5, 0.5])]
    ema = Smoother("ema", alpha=0.25).new_state()
    expect = xs[0]
    assert np.allclose(ema.update(xs[0]), expect)
    for x in xs[1:]:
        expect = 0.25 * x + 0.75 * expect  # s_t = a x_t + (1 - a) s_{t-1}
        assert np.allclose(ema.update(x), expect)
    win = Smoother("window", window=2).new_state()
    outs = [win.update(x) for x in xs]
    assert np.allclose(outs[1], (xs[0] + xs[1]) / 2) and np.allclose(outs[2], (xs[1] + xs[2]) / 2)
    off = Smoother("off").new_state()
    assert np.allclose(off.update(xs[1]), xs[1])
    with pytest.raises(ValueError):
        Smoother("median")


def test_smoothing_is_per_track() -> None:
    tr = FaceTracker(smoother=Smoother("ema", alpha=0.5))
    t = tr.update([(0, 0, 20, 20), (100, 0, 20, 20)])
    assert np.allclose(t[0].smooth("m", np.array([1.0, 0.0]), tr.smoother), [1, 0])
    assert np.allclose(t[1].smooth("m", np.array([0.0, 1.0]), tr.smoother), [0, 1])
    t = tr.update([(0, 0, 20, 20), (100, 0, 20, 20)])
    assert np.allclose(t[0].smooth("m", np.array([0.0, 1.0]), tr.smoother), [0.5, 0.5])


def test_enrolment_store_similarity_and_round_trip(tmp_path: Path) -> None:
    store = EnrolmentStore()
    face = np.full((40, 30, 3), 7, np.uint8)
    store.add("ada", face, "tfe-jl", np.array([1.0, 0.0, 0.0]))
    store.add("ada", face, "tfe-jl", np.array([0.0, 1.0, 0.0]))
    store.add("bob", face, "tfe-jl", np.array([0.0, 0.0, 1.0]))
    q = np.array([1.0, 1.0, 0.0])
    sims = store.similarities(q, "tfe-jl")
    assert sims["ada"] == pytest.approx(1 / np.sqrt(2))  # best of ada's two pictures
    assert sims["bob"] == pytest.approx(0.0)
    assert store.similarities(q, "other-model") == {}  # features of another model are never mixed
    store.save(tmp_path)
    again = EnrolmentStore.load(tmp_path)
    assert again.names() == ["ada", "bob"]
    assert np.array_equal(again.items()[0].face, face)
    assert again.similarities(q, "tfe-jl") == pytest.approx(sims)
    assert again.fill("netb", lambda pic: np.array([pic.mean(), 1.0])) == 3
    assert again.missing("netb") == []
    with pytest.raises(ValueError):
        store.add("  ", face, "tfe-jl", q)


def test_damaged_enrolment_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "enrolments.json").write_text("{not json")
    with pytest.raises(ValueError, match="damaged"):
        EnrolmentStore.load(tmp_path)
    assert len(EnrolmentStore.load(tmp_path / "absent")) == 0


def test_cosine() -> None:
    assert cosine(np.array([1, 2]), np.array([2, 4])) == pytest.approx(1.0)
    assert cosine(np.array([1, 0]), np.array([-1, 0])) == pytest.approx(-1.0)
    assert cosine(np.zeros(3), np.ones(3)) == 0.0


def test_job_state_reads_the_engine_event_stream() -> None:
    st = JobState("r", Path("out"))
    lines = [
        json.dumps({"event": "start", "recipe": "r", "device": "cpu", "epochs": 2, "start_epoch": 0, "steps": 4,
                    "resumed": False, "time": 0}),
        "a stray print line",
        json.dumps({"event": "step", "epoch": 1, "epochs": 2, "step": 2, "steps": 4, "global_step": 2,
                    "loss": 1.5, "accuracy": 0.25, "lr": 0.1, "images_per_s": 100.0, "eta_s": 12.0}),
    ]
    for line in lines:
        st.feed(line)
    assert st.status == "running" and st.fraction == pytest.approx((0 + 2 / 4) / 2)
    assert st.eta_s == 12.0 and st.step_curve == [(2.0, 1.5, 0.25)]
    assert "a stray print line" in st.log
    st.feed(json.dumps({"event": "epoch", "epoch": 1, "epochs": 2, "loss": 1.2, "accuracy": 0.5,
                        "val": {"val_accuracy": 0.4}, "checkpoint": "out/checkpoint.pt", "eta_s": 6.0}))
    assert st.epoch_curve == [(1, 1.2, 0.5, 0.4)] and st.fraction == pytest.approx(0.5)
    st.feed(json.dumps({"event": "end", "status": "interrupted", "epoch": 1, "checkpoint": "out/checkpoint.pt",
                        "message": "stopped"}))
    assert st.status == "interrupted" and st.checkpoint == "out/checkpoint.pt"
    st2 = JobState("r", Path("o"))
    st2.feed(json.dumps({"event": "error", "message": "bad data", "type": "DataError"}))
    assert st2.status == "failed" and st2.message == "bad data"


def test_cli_command_uses_this_python_or_the_frozen_passthrough(monkeypatch) -> None:
    import sys

    prog, args = cli_command(train_args("a/b", Path("d"), Path("o"), 3, "cpu", True, ["--batch-size", "8"]))
    assert prog == sys.executable
    assert args == ["-m", "ferkit.cli", "train", "a/b", "--data", "d", "--out", "o", "--device", "cpu",
                    "--epochs", "3", "--resume", "--batch-size", "8"]
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    prog, args = cli_command(["models"])
    assert args == ["--ferkit-cli", "models"]


def test_gate_keys_maps_and_overlay() -> None:
    keys = parse_gate_keys(["z/fes<-fer/2", "r/fer<-fes/1", "r/fer<-fes/2"])
    assert [(k.gate, k.direction, k.level) for k in keys] == [("r", "fer<-fes", "1"), ("r", "fer<-fes", "2"),
                                                              ("z", "fes<-fer", "2")]
    g = np.stack([np.zeros((4, 4)), np.ones((4, 4))])  # channel mean = 0.5 everywhere
    assert np.allclose(gate_map(g), 0.5)
    face = np.zeros((8, 8), np.uint8)
    out = overlay(face, np.ones((4, 4)), alpha=1.0, size=16)
    assert out.shape == (16, 16, 3) and np.array_equal(out[0, 0], colormap_lut()[255])


def test_latest_slot_drops_stale_frames_and_never_grows() -> None:
    from app.workers import LatestSlot

    slot = LatestSlot()
    for i in range(100):
        slot.put(i)
    assert slot.get(0.01) == 99 and slot.dropped == 99
    assert slot.get(0.01) is None
    got = []
    t = threading.Thread(target=lambda: got.append(slot.get(2.0)))
    t.start()
    slot.put("late")
    t.join(3)
    assert got == ["late"]


def test_export_csv_and_json(tmp_path: Path) -> None:
    from app.core.analyzer import FrameResult, ModelScores, TrackedFace
    from app.core.export import result_records, save_records

    face = TrackedFace(0, 1, (1, 2, 3), (10, 20, 30, 40), 0.9)
    face.scores["m"] = ModelScores("m", ["a", "b"], np.array([0.25, 0.75]), np.array([0.25, 0.75]))
    face.similarities = {"ada": 0.5}
    res = FrameResult(np.zeros((4, 4, 3), np.uint8), [face], "m", {})
    recs = result_records("x.jpg", res) + result_records("y.jpg", FrameResult(np.zeros((4, 4, 3), np.uint8), [], "m", {}))
    save_records(recs, tmp_path / "r.csv")
    save_records(recs, tmp_path / "r.json")
    import csv

    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert rows[0]["m:b"] == "0.75" and rows[0]["m:label"] == "b" and rows[0]["similarity:ada"] == "0.5"
    assert rows[1]["note"] == "no face found"
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["results"][0]["models"]["m"]["scores"] == {"a": 0.25, "b": 0.75}


def test_pyside_refcount_workaround_keeps_none_alive() -> None:
    """PySide6 6.12 on Python 3.11 loses a reference to None per void Qt call (see app/qtcompat.py)."""
    import sys

    from PySide6.QtCore import QObject

    import app.qtcompat as qc

    probe = QObject()
    before = sys.getrefcount(None)
    for _ in range(20000):  # more than None's whole natural reference count in a small process
        probe.setObjectName("x")
    if qc.bug_found:
        assert qc.applied and sys.getrefcount(None) > 1 << 39
    else:
        assert sys.getrefcount(None) >= before - 10


# ---------------------------------------------------------------------------------------- issue #12
STATE_SCRIPT = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "PySide6":
            raise ImportError("blocked import: " + name)
        return None
sys.meta_path.insert(0, Block())
from pathlib import Path
from app.core.enrolment import EnrolmentStore
from app.core.state import AppState
state = AppState(EnrolmentStore(), Path("enrolments"))
gen = state.inspection.start(["a.png", "b.png"])
assert state.inspection.record(gen, "a.png", "could not be read") and not state.inspection.finished
assert not state.inspection.record(gen - 1, "b.png", "stale")
assert not any(m.split(".")[0] == "PySide6" for m in sys.modules), "PySide6 was imported"
print("ok")
"""


def test_state_model_has_no_qt() -> None:
    """The state model imports and works with Qt unavailable (as napari's components beside its Qt layer)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", STATE_SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_labels_are_placed_without_overlap_in_a_crowd() -> None:
    from app.core.layout import overlaps, place_labels

    # five faces side by side, each label three times wider than its face
    boxes = [(100 + 40 * i, 100 + (i % 2) * 10, 36, 36) for i in range(5)]
    sizes = [(120.0, 18.0)] * 5
    bounds = (0.0, 0.0, 640.0, 360.0)
    rects = place_labels(boxes, sizes, bounds)
    assert not any(overlaps(a, b) for i, a in enumerate(rects) for b in rects[i + 1:])
    assert all(0 <= x and 0 <= y and x + w <= 640 and y + h <= 360 for x, y, w, h in rects)
    assert rects[0] == (100, 82, 120.0, 18.0)  # a lone first label sits right above its box
    assert not overlaps((0, 0, 10, 10), (10, 0, 10, 10))  # touching is not hiding


def test_labels_cover_no_other_face_in_the_group_photo() -> None:
    from app.core.layout import overlaps, place_labels

    # the five faces mediapipe finds in resources/samples/multi_face.jpg (1000x667), in track-id order;
    # label #1 used to sit over face #5's mouth and face #3's cheek
    boxes = [(529, 322, 115, 115), (679, 308, 118, 118), (314, 252, 103, 103), (222, 78, 98, 98), (433, 224, 88, 88)]
    for size in ((190.0, 22.0), (260.0, 26.0)):  # the app's font at two scales
        rects = place_labels(boxes, [size] * 5, (0.0, 0.0, 1000.0, 667.0))
        assert not any(overlaps(a, b) for i, a in enumerate(rects) for b in rects[i + 1:])
        assert not [(i, j) for i, r in enumerate(rects) for j, b in enumerate(boxes) if overlaps(r, b)]


def test_labels_larger_than_the_picture_still_get_a_place() -> None:
    from app.core.layout import place_labels

    # more text than picture: no free place exists, so each label takes its best place (above its
    # box, clamped into the picture) and overlaps rather than vanishing
    boxes = [(10, 10, 20, 20), (40, 10, 20, 20)]
    rects = place_labels(boxes, [(100.0, 60.0)] * 2, (0.0, 0.0, 100.0, 60.0))
    assert rects == [(0.0, 0.0, 100.0, 60.0), (0.0, 0.0, 100.0, 60.0)]


def test_rematch_follows_the_gallery_and_guided_capture_keeps_distinct_moments() -> None:
    from types import SimpleNamespace

    from app.core.enrolment import EnrolmentStore, GuidedCapture, enrolment_advice
    from app.core.identity import IdentityChoice, rematch

    choice = IdentityChoice(key="idnet", threshold=0.5, far=0.01, tar=0.46)
    face = SimpleNamespace(identity=np.array([1.0, 0.0]), similarities={}, match=None)
    none = SimpleNamespace(identity=None, similarities={}, match=None)  # a whole-image row: no feature
    store = EnrolmentStore()
    assert rematch([face, none], store, choice) == 1 and face.match is None
    store.add("ada", np.zeros((4, 4, 3), np.uint8), "idnet", np.array([0.9, 0.1]))
    rematch([face], store, choice)
    assert face.match.name == "ada" and face.similarities["ada"] > 0.9
    store.remove("ada")
    store.add("bob", np.zeros((4, 4, 3), np.uint8), "idnet", np.array([0.0, 1.0]))
    rematch([face], store, choice)
    assert face.match.name is None and set(face.similarities) == {"bob"}
    assert rematch([face], store, IdentityChoice()) == 0  # no calibrated feature: nothing is decided

    # guided capture: spaced in time, near copies skipped, finished when complete / timed out / face lost
    cap = GuidedCapture("ada", track_id=1, started=0.0, wanted=3, min_gap_s=0.5)
    pic = lambda: np.zeros((4, 4, 3), np.uint8)  # noqa: E731
    assert cap.offer(pic, "idnet", np.array([1.0, 0.0]), 0.1)
    assert not cap.offer(pic, "idnet", np.array([0.0, 1.0]), 0.3)  # too soon after the last one
    assert not cap.offer(pic, "idnet", np.array([1.0, 0.001]), 0.8)  # the same moment again
    assert cap.offer(pic, "idnet", np.array([0.6, 0.8]), 0.9) and not cap.finished(1.0)
    assert cap.finished(0.9 + cap.lost_s)  # the face has been gone too long
    assert cap.offer(pic, "idnet", np.array([0.0, 1.0]), 1.5) and cap.complete and cap.finished(1.5)
    assert GuidedCapture("x", 1, started=0.0).finished(GuidedCapture.timeout_s)
    advice = enrolment_advice([("ada", 1), ("bob", 4)], 0.46, 0.01, [(1, 0.45), (3, 0.67), (5, 0.79)])
    assert "46 %" in advice and "ada has only one picture" in advice and "bob" not in advice.split("only")[0]
    assert "3 pictures: 67 %" in advice
    assert "only one picture" not in enrolment_advice([("bob", 4)], 0.46, 0.01)
    assert "stranger" not in advice  # 5 pictures: no warning yet
    assert "12 pictures are enrolled" in enrolment_advice([("a", 5), ("b", 5), ("c", 2)], 0.46, 0.01)


def test_about_states_readmes_data_credits_versions_and_every_shipped_card() -> None:
    import re

    from app.core.about import DATA_CREDITS, versions, weights_rows
    from ferkit.models.weights import get_weights, list_weights

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Data and credits", 1)[1].split("\n## ", 1)[0]
    assert re.sub(r"\s+", " ", section).strip() == DATA_CREDITS  # word for word, so the two cannot drift
    got = dict(versions())
    import torch

    assert got["torch"] == torch.__version__ and got["ferkit"] and "mediapipe" in got and got["Python"]
    rows = {r.name: r for r in weights_rows()}
    assert set(rows) == set(list_weights())
    for name, r in rows.items():
        card = get_weights(name)
        assert r.data == card.data and r.classes == len(card.classes)
        assert r.kind == ("identity" if len(card.classes) > 8 else "expression")
        assert bool(r.identity) == card.identity_calibrated
    if "tfe-jl" in rows:
        acc = get_weights("tfe-jl").metrics["fer2013valid_accuracy_majority"]
        assert rows["tfe-jl"].headline == f"{acc * 100:.2f} % on FER+ FER2013Valid (majority vote)"


def test_the_enrolment_cards_measured_rates_reach_the_identity_choice() -> None:
    from app.core.identity import choose_identity, enrolment_rates
    from ferkit.models.weights import get_weights, list_weights

    assert enrolment_rates({"lfw_enrolment_named_right_3": 0.6, "lfw_enrolment_named_right_1": 0.4,
                            "lfw_enrolment_named_right_x": 1.0, "lfw_view2_accuracy": 0.85}) == ((1, 0.4), (3, 0.6))
    if "deepid-ensemble" not in list_weights():
        pytest.skip("deepid-ensemble is not shipped")
    choice = choose_identity(None, None, False, best=lambda: "deepid-ensemble")
    metrics = get_weights("deepid-ensemble").metrics
    assert choice.enrolment_rates == tuple((n, metrics[f"lfw_enrolment_named_right_{n}"]) for n in (1, 3, 5))
    rates = dict(choice.enrolment_rates)
    assert rates[1] < rates[3] < rates[5]  # more pictures, more of a person's photos named


def test_identity_decision_names_only_at_or_above_the_threshold() -> None:
    from app.core.identity import IdentityChoice, decide

    choice = IdentityChoice(key="idnet", threshold=0.5, far=0.01)
    below = decide({"ada": 0.49, "bob": 0.2}, choice)
    assert below.name is None and below.label == "unknown" and below.nearest == "ada"
    assert decide({"ada": 0.5}, choice).name == "ada"
    assert decide({"ada": 0.99}, IdentityChoice()) is None  # no calibrated threshold: no decision at all
    assert decide({}, choice) is None


def test_identity_choice_prefers_the_best_calibrated_feature_then_the_models_own(tmp_path: Path) -> None:
    from ferkit.models.weights import Preprocessing, Weights

    from app.core.identity import choose_identity, describe

    def card(name: str, **kw) -> Weights:
        return Weights(name, "lightcnn9", ["a", "b"], Preprocessing(), **kw)

    idnet = card("idnet", identity_threshold=0.42, identity_far=0.01, identity_tar=0.8,
                 identity_calibration="LFW View 2 pairs")
    idnet.save_card(tmp_path / "idnet.json")
    own = card("expr", identity_threshold=0.7, identity_far=0.001)
    chosen = choose_identity("expr", own, True, best=lambda: str(tmp_path / "idnet.json"))
    assert (chosen.origin, chosen.threshold, chosen.far) == ("enrolment", 0.42, 0.01)
    assert "0.420" in describe(chosen) and "1 %" in describe(chosen) and "LFW View 2" in describe(chosen)
    fallback = choose_identity("expr", own, True, best=lambda: None)
    assert (fallback.key, fallback.origin, fallback.threshold) == ("expr", "model", 0.7)
    uncalibrated = card("old", identity_threshold=0.79)  # a threshold without a stated false-accept rate
    assert not choose_identity("old", uncalibrated, True, best=lambda: None).active
    assert "No calibrated identity feature" in choose_identity("x", None, False, best=lambda: None).reason


def test_one_canonical_name_per_class_and_only_expression_models_compare() -> None:
    from ferkit.models.weights import get_weights, list_weights

    from ferkit.data.classes import canonical, display_classes, is_expression_classifier

    assert display_classes(["angry", "happy", "sad", "surprise"]) == ["anger", "happiness", "sadness", "surprise"]
    assert canonical("Happiness") == "happiness"
    assert not is_expression_classifier(["07202", "07203"])  # an identity net's subjects
    assert not is_expression_classifier(["celeba_subset/07201"] * 3)
    assert is_expression_classifier(["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"])
    known = {"deepid": False, "lightcnn9-identity": False, "tfe-jl": True, "netb-dal-mse": True, "eifn": True,
             "fersnet": True, "resnet18-ferplus": True}
    for name in set(known) & set(list_weights()):
        assert is_expression_classifier(get_weights(name).classes) == known[name], name


def test_a_truncated_video_is_damaged_at_the_frame_it_ends(tmp_path: Path) -> None:
    from app.core.sources import VideoDamaged, VideoFile, sample_video

    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(sample_video().read_bytes()[:200_000])
    video = VideoFile(damaged, loop=True)
    n = 0
    with pytest.raises(VideoDamaged) as err:
        while video.read() is not None:
            n += 1
            assert n < video.frame_count  # never rewound
    video.close()
    assert err.value.frame == n and 0 < n < err.value.expected
    assert f"damaged at frame {n} of {err.value.expected}" in str(err.value)
    whole = VideoFile(sample_video(), loop=False)
    count = 0
    while whole.read() is not None:  # a healthy file ends without complaint
        count += 1
    whole.close()
    assert count >= whole.frame_count - 2


def test_export_has_the_identity_decision_not_the_nearest_name(tmp_path: Path) -> None:
    from app.core.analyzer import FrameResult, ModelScores, TrackedFace
    from app.core.export import result_records, save_records
    from app.core.identity import IdentityChoice, decide

    face = TrackedFace(0, 1, (1, 2, 3), (10, 20, 30, 40), 0.9)
    face.scores["m"] = ModelScores("m", ["happiness", "neutral"], np.array([0.75, 0.25]), np.array([0.75, 0.25]))
    face.similarities = {"ada": 0.4}
    face.match = decide(face.similarities, IdentityChoice(key="idnet", threshold=0.5))
    recs = result_records("x.jpg", FrameResult(np.zeros((4, 4, 3), np.uint8), [face], "m", {}))
    save_records(recs, tmp_path / "r.csv")
    import csv

    row = next(csv.DictReader(open(tmp_path / "r.csv")))
    assert row["identity"] == "unknown" and row["similarity:ada"] == "0.4" and row["m:label"] == "happiness"


def test_live_frames_detect_every_fifth_frame_and_stills_use_the_full_detector() -> None:
    """Detection is off the critical path of live video; inspection of images is untouched by it."""
    import cv2

    from ferkit.face.pipeline import FacePipeline, TrackedFacePipeline
    from ferkit.paths import samples_dir

    from app.core.analyzer import LIVE_DETECT_EVERY, FrameAnalyzer

    analyzer = FrameAnalyzer(device="cpu")
    try:
        assert isinstance(analyzer.live_pipeline, TrackedFacePipeline)
        assert analyzer.live_pipeline.detect_every == LIVE_DETECT_EVERY == 5
        assert type(analyzer.pipeline) is FacePipeline and analyzer.pipeline is not analyzer.live_pipeline
        cap = cv2.VideoCapture(str(samples_dir() / "expressions_pexels_640x360.mp4"))
        ids = []
        for i in range(10):
            ok, bgr = cap.read()
            assert ok
            result = analyzer.analyze(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), frame_index=i)
            ids.append([f.track_id for f in result.faces])
        cap.release()
        stats = analyzer.live_pipeline.stats
        assert stats["frames"] == 10 and stats["detections"] <= 3 and stats["followed"] >= 7
        assert all(frame_ids == ids[0] for frame_ids in ids) and len(ids[0]) == 1  # one face, one track
        still = cv2.cvtColor(cv2.imread(str(samples_dir() / "single_face.jpg")), cv2.COLOR_BGR2RGB)
        analyzer.analyze(still, track=False)
        assert analyzer.live_pipeline.stats["frames"] == 10  # the still never entered the stream
        analyzer.reset_tracking()
        assert not analyzer.live_pipeline.follower.active
    finally:
        analyzer.close()


def test_live_frame_with_an_ambiguous_followed_face_is_checked_by_the_pipeline(tmp_path: Path) -> None:
    """The analyzer hands the primary model's scores to the tracked pipeline's check and, for the faces
    it detected again, makes the crops and the scores again (ferkit.face.pipeline.TrackedFacePipeline.check)."""
    import torch

    from ferkit.face.align import align_face
    from ferkit.face.types import DetectedFace
    from ferkit.inference import Predictor, crops_to_tensor
    from ferkit.models.registry import create_model
    from ferkit.models.weights import Preprocessing, Weights

    from app.core.analyzer import FrameAnalyzer
    from app.core.models import ModelHandle

    torch.manual_seed(0)
    model = create_model("resnet12_fer").eval()
    weights = Weights(name="tiny", architecture="resnet12_fer", classes=[f"c{i}" for i in range(model.num_classes)],
                      preprocessing=Preprocessing(input_size=48), model_cfg={})
    ckpt = tmp_path / "tiny.pt"
    torch.save({"weights_meta": weights.to_dict(), "modules": {"model": model.state_dict()}}, ckpt)
    pred = Predictor(ckpt, device="cpu", engine="torch", tta="none")

    def face(x: int, source: str) -> DetectedFace:
        return DetectedFace(box=(x, 30, 50, 50), score=0.9, landmarks=np.zeros((0, 2), np.float32),
                            left_eye=(x + 15.0, 50.0), right_eye=(x + 35.0, 50.0), source=source)

    class Followed:
        calls: list = []

        def detect(self, image):
            return [face(10, "tracked")]

        def align(self, image, f, prep):
            return align_face(image, f, prep.input_size, prep.grayscale, prep.alignment).crop

        def check(self, image, faces, probabilities):
            self.calls.append(np.asarray(probabilities).shape)
            return [face(60, "mesh")], [0]

        def reset(self):
            pass

    analyzer = FrameAnalyzer(device="cpu")
    try:
        analyzer.primary = ModelHandle("tiny", pred.weights, pred, pred.torch_model, torch.device("cpu"))
        analyzer.live_pipeline.close()
        analyzer.live_pipeline = Followed()
        rgb = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
        result = analyzer.analyze(rgb)
        (f,) = result.faces
        assert Followed.calls == [(1, model.num_classes)]
        assert f.box == (60, 30, 50, 50) and f.detection.source == "mesh"
        crop = Followed().align(rgb, face(60, "mesh"), pred.preprocessing)
        again = pred.predict_tensor(crops_to_tensor([crop])).probabilities[0].double().numpy()
        assert np.allclose(f.scores[analyzer.primary.name].raw, again, atol=1e-6)  # scored on the new crop
    finally:
        analyzer.live_pipeline = type("Closed", (), {"close": lambda self: None})()
        analyzer.close()


def test_tracked_faces_reuse_their_identity_feature_between_refreshes(tmp_path: Path) -> None:
    """Live frames: a track's identity feature is computed on its first frame and then every
    IDENTITY_REFRESH_FRAMES frames (similarities and decisions every frame); stills always compute it."""
    import torch

    from ferkit.face.align import align_face
    from ferkit.face.types import DetectedFace
    from ferkit.inference import Predictor
    from ferkit.models.registry import create_model
    from ferkit.models.weights import Preprocessing, Weights

    from app.core.analyzer import IDENTITY_REFRESH_FRAMES, FrameAnalyzer
    from app.core.identity import IdentityChoice
    from app.core.models import ModelHandle

    torch.manual_seed(0)
    model = create_model("deepid", num_classes=3).eval()
    weights = Weights(name="idnet", architecture="deepid", classes=["a", "b", "c"],
                      preprocessing=Preprocessing(input_size=48), model_cfg={"num_classes": 3})
    ckpt = tmp_path / "idnet.pt"
    torch.save({"weights_meta": weights.to_dict(), "modules": {"model": model.state_dict()}}, ckpt)
    pred = Predictor(ckpt, device="cpu", engine="torch", tta="none")
    forwards: list[int] = []
    pred.torch_model.register_forward_hook(lambda m, i, o: forwards.append(i[0].shape[0]))

    class OneFace:
        def detect(self, image):
            return [DetectedFace(box=(10, 30, 50, 50), score=0.9, landmarks=np.zeros((0, 2), np.float32),
                                 left_eye=(25.0, 50.0), right_eye=(45.0, 50.0), source="tracked")]

        def align(self, image, f, prep):
            return align_face(image, f, prep.input_size, prep.grayscale, prep.alignment).crop

        def reset(self):
            pass

    analyzer = FrameAnalyzer(device="cpu")
    try:
        analyzer.live_pipeline.close()
        analyzer.pipeline.close()
        analyzer.live_pipeline = analyzer.pipeline = OneFace()
        analyzer.identity_handle = ModelHandle("idnet", pred.weights, pred, pred.torch_model, torch.device("cpu"))
        analyzer.identity = IdentityChoice(key="idnet", threshold=0.5)
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(2 * IDENTITY_REFRESH_FRAMES + 1)]
        live = [analyzer.analyze(rgb).faces[0] for rgb in frames]
        assert len(forwards) == 3  # frames 0, 5 and 10 of one track
        assert all(np.array_equal(f.identity, live[0].identity) for f in live[:IDENTITY_REFRESH_FRAMES])
        assert not np.array_equal(live[IDENTITY_REFRESH_FRAMES].identity, live[0].identity)  # a new frame's feature
        analyzer.reset_tracking()
        analyzer.analyze(frames[1])
        assert len(forwards) == 4  # a new source / seek: computed again at once
        analyzer.analyze(frames[2], track=False)
        analyzer.analyze(frames[2], track=False)
        assert len(forwards) == 6  # still images: every time
    finally:
        analyzer.live_pipeline = analyzer.pipeline = type("Closed", (), {"close": lambda self: None})()
        analyzer.close()


def test_new_tracks_are_numbered_left_to_right() -> None:
    from ferkit.face.tracking import FaceTracker

    tracker = FaceTracker()
    # detections arrive by confidence (right face first); ids follow reading order
    tracks = tracker.update([(300, 10, 50, 50), (20, 40, 50, 50), (150, 5, 50, 50)])
    assert [t.id for t in tracks] == [3, 1, 2]
    # a later newcomer takes the next id whatever its place, known faces keep theirs
    tracks = tracker.update([(302, 12, 50, 50), (0, 200, 50, 50), (21, 41, 50, 50)])
    assert [t.id for t in tracks] == [3, 4, 1]
