"""Issue 14 (live speed): thread settings, engine choice and fallback, one forward per frame, BatchNorm
folding, the ONNX cache, int8 quantisation, tracking hand-over and the benchmark's background load."""
from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn

from ferkit.face.tracking import FaceTracker, FlowFollower, iou
from ferkit.inference import SMALL_BATCH, Predictor, choose_engine, intra_op_threads
from ferkit.models.registry import create_model
from ferkit.models.weights import Preprocessing, Weights
from ferkit.paths import samples_dir

ORT = pytest.importorskip("onnxruntime")


def _checkpoint(tmp_path: Path, arch: str = "resnet12_fer", name: str = "checkpoint.pt",
                classes: Optional[list[str]] = None, **cfg) -> Path:
    """A training-checkpoint file of an untrained ``arch`` (what ``Predictor`` and the cache take)."""
    torch.manual_seed(0)
    cfg = {**cfg, **({"num_classes": len(classes)} if classes else {})}
    model = create_model(arch, **cfg).eval()
    size = int(getattr(model, "input_size", None) or 48)
    names = classes or [f"c{i}" for i in range(model.num_classes)]
    weights = Weights(name=f"test-{arch}", architecture=arch, classes=names,
                      preprocessing=Preprocessing(input_size=size), model_cfg=cfg)
    path = tmp_path / name
    torch.save({"weights_meta": weights.to_dict(), "modules": {"model": model.state_dict()}}, path)
    return path


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("FERKIT_CACHE", str(root))
    return root / "onnx"


# ---- threads -------------------------------------------------------------------------------------------
def test_intra_op_threads_sets_and_restores() -> None:
    torch.set_num_threads(2)
    with intra_op_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError):
        with intra_op_threads(1):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == 2  # restored on errors too
    with intra_op_threads(None):
        assert torch.get_num_threads() == 2


def test_torch_predictor_runs_small_batches_on_one_thread(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    pred = Predictor(_checkpoint(tmp_path), device="cpu", engine="torch", tta="none")
    seen: list[int] = []
    pred.model.register_forward_hook(lambda m, i, o: seen.append(torch.get_num_threads()))
    crops = torch.randint(0, 256, (3, 1, 48, 48), dtype=torch.uint8)
    pred.predict_tensor(crops)
    big = torch.randint(0, 256, (SMALL_BATCH + 1, 1, 48, 48), dtype=torch.uint8)
    pred.predict_tensor(big)  # an evaluation-size batch keeps the caller's setting
    assert seen == [1, 2]
    assert torch.get_num_threads() == 2  # the caller's global setting is left as it was
    two = Predictor(_checkpoint(tmp_path), device="cpu", engine="torch", threads=2)
    two.model.register_forward_hook(lambda m, i, o: seen.append(torch.get_num_threads()))
    torch.set_num_threads(1)
    two.predict_tensor(crops)
    assert seen[-1] == 2 and torch.get_num_threads() == 1


def test_onnx_predictor_uses_one_thread_sessions_for_faces(tmp_path: Path, cache: Path) -> None:
    torch.set_num_threads(2)
    pred = Predictor(_checkpoint(tmp_path), device="cpu", engine="onnx", tta="none")
    model = pred.model
    assert model.session.get_session_options().intra_op_num_threads == 1
    pred.predict_tensor(torch.randint(0, 256, (2, 1, 48, 48), dtype=torch.uint8))
    assert set(model._sessions) == {1}
    pred.predict_tensor(torch.randint(0, 256, (SMALL_BATCH + 4, 1, 48, 48), dtype=torch.uint8))
    assert set(model._sessions) == {1, 2}  # the big batch got a session with the caller's thread count
    assert model._sessions[2].get_session_options().intra_op_num_threads == 2


# ---- engine choice -------------------------------------------------------------------------------------
def test_auto_engine_is_onnx_and_matches_torch(tmp_path: Path, cache: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    auto = Predictor(ckpt, device="cpu")
    assert auto.engine == "onnx" and auto.engine_requested == "auto" and auto.engine_reason is None
    ref = Predictor(ckpt, device="cpu", engine="torch")
    crops = torch.randint(0, 256, (4, 1, 48, 48), dtype=torch.uint8)
    assert (auto.predict_tensor(crops).logits - ref.predict_tensor(crops).logits).abs().max() < 1e-4


def test_auto_engine_falls_back_to_torch_without_onnxruntime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    import ferkit.inference as inference

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # "import onnxruntime" now raises ImportError
    monkeypatch.setattr(inference, "_SAID", set())
    ckpt = _checkpoint(tmp_path)
    with caplog.at_level(logging.INFO, logger="ferkit.inference"):
        pred = Predictor(ckpt, device="cpu")
        Predictor(ckpt, device="cpu")
    assert pred.engine == "torch" and "onnxruntime is not installed" in pred.engine_reason
    said = [r for r in caplog.records if "onnxruntime is not installed" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING  # said once, not per predictor or frame
    with pytest.raises(RuntimeError, match="onnxruntime"):
        Predictor(ckpt, device="cpu", engine="onnx")  # asked for explicitly: an error, not a silent fallback


def test_gates_and_synthesis_stay_torch(tmp_path: Path, cache: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    pred = Predictor(ckpt, device="cpu", needs=["gates"])
    assert pred.engine == "torch" and "gates requested" in pred.engine_reason
    fersnet = _checkpoint(tmp_path, "fersnet_light", "fersnet.pt", width=8, input_size=64)
    full = Predictor(fersnet, device="cpu")  # needs not said: keeps what the model offers
    assert full.engine == "torch" and "gates and synthesis" in full.engine_reason
    scores_only = Predictor(fersnet, device="cpu", needs=())
    assert scores_only.engine == "onnx"
    crops = torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8)
    gates = scores_only.predict_tensor(crops, return_gates=True).gates  # gate maps come from torch regardless
    assert gates and all(v.shape[0] == 2 for v in gates.values())
    cuda = torch.device("cuda")
    assert choose_engine("auto", scores_only.torch_model, cuda, needs=())[0] == "torch"
    with pytest.raises(ValueError, match="needs"):
        Predictor(ckpt, device="cpu", needs=["landmarks"])


def test_all_faces_of_a_frame_go_in_one_onnx_run(tmp_path: Path, cache: Path) -> None:
    pytest.importorskip("mediapipe")
    with Predictor(_checkpoint(tmp_path), device="cpu", tta="flip") as pred:
        assert pred.engine == "onnx"
        batches: list[int] = []
        run = pred.model.run
        pred.model.run = lambda x, threads=None: (batches.append(x.shape[0]), run(x, threads))[1]
        res = pred.predict_file(samples_dir() / "multi_face.jpg")
        assert len(res.faces) >= 4 and batches == [2 * len(res.faces)]  # faces and their mirrors, one call


# ---- export: BatchNorm folding and the cache ----------------------------------------------------------------
class _Heads(nn.Module):
    """BN in every place ferkit's models put one: after a conv, after a ReLU, after and before a Linear,
    and two BN heads concatenated into a classifier (TFE-JL)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn_conv = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)
        self.bn_act = nn.BatchNorm2d(4)
        self.fc1, self.bn_fc = nn.Linear(4 * 6 * 6, 8), nn.BatchNorm1d(8)
        self.bn_a, self.bn_b = nn.BatchNorm1d(8), nn.BatchNorm1d(8)
        self.fc2, self.cls = nn.Linear(8, 8), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn_act(torch.relu(self.bn_conv(self.conv(x)))).flatten(1)
        h = self.bn_fc(self.fc1(x))
        return self.cls(torch.cat([self.bn_a(h), self.bn_b(self.fc2(h))], 1))


def test_fold_batch_norms_leaves_none_and_keeps_the_numbers(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    from ferkit.export.onnx import batchnorm_count, fold_batch_norms

    torch.manual_seed(0)
    model = _Heads().eval()
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(3, 1, 8, 8)
    path = tmp_path / "heads.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["input"], dynamic_axes={"input": {0: "b"}},
                      do_constant_folding=False, dynamo=False)  # no folding by the exporter: all BNs stay
    proto = onnx.load(str(path))
    before = batchnorm_count(proto)
    assert before >= 5  # the conv's BN may already be fused by the exporter; the other five are not
    assert fold_batch_norms(proto) == before
    assert batchnorm_count(proto) == 0 and batchnorm_count(proto, optimized=True) == 0
    onnx.checker.check_model(proto)
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - model(x).numpy()).max() < 1e-4


def test_tfe_jl_export_has_no_batchnorm(tmp_path: Path) -> None:
    from ferkit.export.onnx import OnnxModel, batchnorm_count, export_model

    torch.manual_seed(0)
    model = create_model("tfe_jl", emotion_depth=12, num_classes=7).eval()
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    w = Weights(name="t", architecture="tfe_jl", classes=[f"c{i}" for i in range(7)], preprocessing=Preprocessing(),
                model_cfg={"emotion_depth": 12, "num_classes": 7})
    result = export_model(model, w, tmp_path / "t.onnx")  # checked against torch within 1e-4 inside
    assert batchnorm_count(result.path) == 0 and batchnorm_count(result.path, optimized=True) == 0
    info = OnnxModel(result.path).export_info
    assert info["batchnorm_folded"] == 2 and info["revision"] >= 2  # TFE-JL's two BN heads


def test_export_cache_is_keyed_by_content(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ferkit.export.onnx as onnx_export

    a = _checkpoint(tmp_path)
    first = onnx_export.cached_export(a)
    assert first.parent == cache and first.is_file()
    b = tmp_path / "copy" / "checkpoint.pt"
    b.parent.mkdir()
    shutil.copy(a, b)
    os.utime(b, (1e9, 1e9))

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("exported again although the weights did not change")

    monkeypatch.setattr(onnx_export, "export_onnx", no_export)
    assert onnx_export.cached_export(b) == first  # same content elsewhere: the same file, no export
    monkeypatch.undo()
    monkeypatch.setenv("FERKIT_CACHE", str(cache.parent))
    state = torch.load(b, weights_only=False)
    next(iter(state["modules"]["model"].values())).add_(1.0)
    torch.save(state, b)
    assert onnx_export.cached_export(b) != first  # changed weights: a new export


# ---- int8 -------------------------------------------------------------------------------------------------
def test_int8_quantisation_runs_and_stays_close(tmp_path: Path, cache: Path) -> None:
    from tests.fixtures.datasets import make_ferplus_tree

    from ferkit.cli import main
    from ferkit.export.onnx import OnnxModel, calibration_files, calibration_inputs

    crops = tmp_path / "crops"
    make_ferplus_tree(crops, n=24)
    ckpt = _checkpoint(tmp_path)
    out = tmp_path / "int8.onnx"
    assert main(["export-onnx", "--checkpoint", str(ckpt), "--out", str(out), "--int8", "--calibration", str(crops),
                 "--calibration-size", "16"]) == 0
    q = OnnxModel(out)
    assert q.quantized and q.export_info["quantization"]["calibration_images"] == 16
    assert any(n.op_type == "QuantizeLinear" for n in __import__("onnx").load(str(out)).graph.node)
    fp32 = Predictor(ckpt, device="cpu", engine="onnx", tta="none")
    int8 = Predictor(ckpt, device="cpu", engine="onnx-int8", calibration=crops, tta="none")
    assert int8.engine == "onnx-int8" and int8.model.quantized
    x = torch.from_numpy(calibration_inputs(calibration_files(crops, 24), fp32.preprocessing))
    a, b = fp32.model(x).probabilities, int8.model(x).probabilities
    assert (a - b).abs().max() < 0.1  # int8 moves scores a little, not wildly


# ---- face tracking ------------------------------------------------------------------------------------------
def _moving_face_frames(n: int = 24, step: int = 6) -> list[np.ndarray]:
    img = cv2.cvtColor(cv2.imread(str(samples_dir() / "single_face.jpg")), cv2.COLOR_BGR2RGB)
    img = cv2.resize(img, (480, 360))
    pad = cv2.copyMakeBorder(img, 0, 0, 0, n * step, cv2.BORDER_REPLICATE)
    return [np.ascontiguousarray(pad[:, (n - i) * step:(n - i) * step + 480]) for i in range(n)]  # face moves right


def test_tracked_face_keeps_its_id_between_detections() -> None:
    pytest.importorskip("mediapipe")
    from ferkit.face.pipeline import FacePipeline, TrackedFacePipeline

    frames = _moving_face_frames()
    tracker = FaceTracker(max_missed=2)
    ids, boxes, sources = [], [], []
    with TrackedFacePipeline(detect_every=6) as fast, FacePipeline(landmarks=False) as every:
        for rgb in frames:
            faces = fast.detect(rgb)
            assert len(faces) == 1
            ids.append(tracker.update([f.box for f in faces])[0].id)
            boxes.append(faces[0].box)
            sources.append(faces[0].source)
            (ref,) = every.detect(rgb)
            assert iou(faces[0].box, ref.box) > 0.6  # the followed box stays on the face
            assert abs(faces[0].left_eye[0] - ref.left_eye[0]) < 0.15 * ref.box[2]
        assert set(ids) == {1}  # one person, one id across detections and followed frames
        assert sources.count("tracked") >= len(frames) // 2 and fast.stats["detections"] < len(frames) // 2
        assert boxes[-1][0] - boxes[0][0] > 100  # it did follow the motion
        assert fast.align(frames[-1], faces[0], Preprocessing()).shape == (48, 48, 1)  # the crop follows
        assert fast.quality and 0 < fast.quality[0] <= 1


def test_a_face_that_leaves_ends_its_track() -> None:
    pytest.importorskip("mediapipe")
    from ferkit.face.pipeline import TrackedFacePipeline

    cap = cv2.VideoCapture(str(samples_dir() / "face_then_no_face.mov"))
    tracker = FaceTracker(max_missed=3)
    counts, live_ids = [], []
    with TrackedFacePipeline(detect_every=5) as fast:
        while len(counts) < 120:
            ok, bgr = cap.read()
            if not ok:
                break
            faces = fast.detect(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            tracker.update([f.box for f in faces])
            counts.append(len(faces))
            live_ids.append(sorted(tracker.tracks))
    cap.release()
    assert len(counts) == 120
    assert all(c == 1 for c in counts[:60]) and all(ids == [1] for ids in live_ids[:60])  # her face, one track
    assert all(c == 0 for c in counts[85:]) and all(ids == [] for ids in live_ids[85:])  # gone, track ended
    assert fast.stats["followed"] > 30


def test_flow_follower_reports_a_lost_face() -> None:
    rng = np.random.default_rng(0)
    textured = (rng.random((240, 320)) * 255).astype(np.uint8)
    textured = cv2.GaussianBlur(textured, (5, 5), 0)
    from ferkit.face.types import DetectedFace

    face = DetectedFace(box=(100, 60, 80, 80), score=0.9, landmarks=np.zeros((0, 2), np.float32),
                        left_eye=(120.0, 90.0), right_eye=(160.0, 90.0), source="detector")
    f = FlowFollower()
    f.seed(textured, [face])
    (moved,) = f.step(np.roll(textured, 5, axis=1))
    assert abs(moved.box[0] - 105) <= 1 and abs(moved.left_eye[0] - 125) < 1 and moved.source == "tracked"
    assert f.step(np.full_like(textured, 128)) is None  # nothing left to follow: lost, caller re-detects


def test_flow_follower_fits_from_the_key_frame_and_seeds_around_the_eyes() -> None:
    from ferkit.face.tracking import EYE_BAND
    from ferkit.face.types import DetectedFace

    rng = np.random.default_rng(1)
    textured = cv2.GaussianBlur((rng.random((240, 320)) * 255).astype(np.uint8), (5, 5), 0)
    face = DetectedFace(box=(90, 50, 120, 120), score=0.9, landmarks=np.zeros((0, 2), np.float32),
                        left_eye=(125.0, 95.0), right_eye=(175.0, 95.0), source="mesh")
    f = FlowFollower()
    f.seed(textured, [face])
    pts = f._faces[0].key_points
    side, up, down = EYE_BAND
    assert len(pts) >= f.min_points and pts[:, 0].min() >= 150 - side * 50 - 1 and pts[:, 0].max() <= 150 + side * 50 + 1
    assert pts[:, 1].min() >= 95 - up * 50 - 1 and pts[:, 1].max() <= 95 + down * 50 + 1  # brows to nose, not the mouth
    for k in range(1, 6):  # 1.5 px a frame: sub-pixel steps whose fit errors would add up frame to frame
        m = np.float32([[1, 0, 1.5 * k], [0, 1, 0.5 * k]])
        (moved,) = f.step(cv2.warpAffine(textured, m, (320, 240), borderMode=cv2.BORDER_REFLECT))
    assert abs(moved.left_eye[0] - (125 + 7.5)) < 0.15 and abs(moved.right_eye[1] - (95 + 2.5)) < 0.15
    assert moved.source == "tracked" and f._faces[0].key_face is face  # still mapped from the key frame
    again = DetectedFace(box=(97, 52, 120, 120), score=0.9, landmarks=np.zeros((0, 2), np.float32),
                         left_eye=(132.5, 97.5), right_eye=(182.5, 97.5), source="mesh")
    assert abs(f.motion[0] - np.hypot(7.5, 2.5) / 50) < 0.01  # eye shift since the key frame, in eye distances
    f.reseed(0, again)  # detected again on this frame: the new key frame
    assert f._faces[0].key_face is again and f.quality == [1.0] and f.motion == [0.0]
    with pytest.raises(ValueError):
        FlowFollower(model="homography")


def test_ambiguous_followed_face_is_detected_again_on_the_same_frame() -> None:
    pytest.importorskip("mediapipe")
    from ferkit.face.pipeline import FacePipeline, TrackedFacePipeline

    frames = _moving_face_frames(n=6)
    with TrackedFacePipeline(detect_every=10) as fast, FacePipeline() as every:
        (first,) = fast.detect(frames[0])
        assert first.source == "mesh" and fast.ambiguous([first], [[0.5, 0.45, 0.05]]) == []  # detected: never
        (followed,) = fast.detect(frames[1])
        assert followed.source == "tracked"
        clear = [[0.9, 0.05, 0.05]]
        assert fast.check(frames[1], [followed], clear) == ([followed], []) and fast.stats["verified"] == 0
        faces, changed = fast.check(frames[1], [followed], [[0.5, 0.45, 0.05]])
        (ref,) = every.detect(frames[1])
        assert changed == [0] and faces[0].source == "mesh" and fast.stats["verified"] == 1
        assert faces[0].box == ref.box and faces[0].left_eye == ref.left_eye and faces[0].right_eye == ref.right_eye
        (next_one,) = fast.detect(frames[2])  # followed on from the re-detected face
        assert next_one.source == "tracked" and fast.stats["detections"] == 1
        assert iou(next_one.box, every.detect(frames[2])[0].box) > 0.8
    with TrackedFacePipeline(verify_margin=0) as off:
        assert off.ambiguous([followed], [[0.5, 0.45, 0.05]]) == []


def test_a_face_that_has_not_moved_is_not_detected_again() -> None:
    """A still image looped as a video: the followed crop is the key frame's, so an ambiguous label
    is not worth a detector + mesh run on every frame."""
    pytest.importorskip("mediapipe")
    from ferkit.face.pipeline import TrackedFacePipeline

    still = _moving_face_frames(n=2)[0]
    with TrackedFacePipeline(detect_every=10) as fast:
        fast.detect(still)
        for _ in range(3):
            (followed,) = fast.detect(still.copy())
            assert followed.source == "tracked" and fast.follower.motion[0] < 0.001
            assert fast.check(still, [followed], [[0.5, 0.45, 0.05]]) == ([followed], [])
        assert fast.stats["verified"] == 0 and fast.stats["detections"] == 1


def test_predict_image_scores_checked_faces_again(tmp_path: Path) -> None:
    from ferkit.face.align import align_face
    from ferkit.face.types import DetectedFace

    pred = Predictor(_checkpoint(tmp_path), device="cpu", engine="torch", tta="none")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)

    def face(x: float, source: str) -> DetectedFace:
        return DetectedFace(box=(int(x), 30, 50, 50), score=0.9, landmarks=np.zeros((0, 2), np.float32),
                            left_eye=(x + 15.0, 50.0), right_eye=(x + 35.0, 50.0), source=source)

    class Followed:
        """A tracked pipeline's interface: the check re-detects face 1 only."""

        seen: list = []

        def detect(self, image: np.ndarray) -> list[DetectedFace]:
            return [face(10, "tracked"), face(90, "tracked")]

        def align(self, image: np.ndarray, f: DetectedFace, prep: Preprocessing) -> np.ndarray:
            return align_face(image, f, prep.input_size, prep.grayscale, prep.alignment).crop

        def check(self, image, faces, probabilities):
            self.seen.append(np.asarray(probabilities).shape)
            return [faces[0], face(100, "mesh")], [1]

    res = pred.predict_image(rgb, pipeline=Followed())
    # an every-frame pipeline's check re-detects nothing (FacePipeline.check)
    every_frame = type("P", (Followed,), {"check": lambda self, image, faces, probabilities: (faces, [])})
    direct = pred.predict_image(rgb, pipeline=every_frame())
    assert Followed.seen == [(2, len(pred.classes))]
    assert res.faces[1].box == (100, 30, 50, 50) and res.faces[0].box == (10, 30, 50, 50)
    assert res.faces[0].scores == direct.faces[0].scores and res.faces[1].scores != direct.faces[1].scores

    class RightFirst(Followed):
        """Detection order right face first: the check's index 0 is the right face; results read left to right."""

        def detect(self, image: np.ndarray) -> list[DetectedFace]:
            return [face(90, "tracked"), face(10, "tracked")]

        def check(self, image, faces, probabilities):
            assert faces[0].box[0] == 90  # the check sees detection order, the order it indexes its faces by
            return [face(95, "mesh"), faces[1]], [0]

    res = pred.predict_image(rgb, pipeline=RightFirst())
    assert [f.box[0] for f in res.faces] == [10, 95]


# ---- benchmark plumbing -------------------------------------------------------------------------------------
def test_background_load_is_always_stopped() -> None:
    from ferkit.bench.load import background_load

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        # a zombie counts as gone
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().split()[2] != "Z"
        except OSError:
            return False

    with background_load(1) as info:
        (pid,) = info["processes"]
        assert alive(pid)
    assert not alive(pid)
    for exc in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(exc):
            with background_load(1) as info:
                pid = info["processes"][0]
                raise exc()
        assert not alive(pid)


def test_agreement_compare_counts_frames() -> None:
    from ferkit.bench.agreement import compare

    box, other = (10, 10, 50, 50), (200, 10, 50, 50)
    ref = [[(box, "happy")], [(box, "sad")], [(box, "sad"), (other, "neutral")], []]
    got = [[((12, 11, 50, 50), "happy")], [(box, "happy")], [(box, "sad")], []]
    r = compare(ref, got)
    assert r["frames"] == 4 and r["agreeing_frames"] == 2 and r["agreement"] == 0.5
    assert r["frames_with_other_face_count"] == 1 and r["face_label_agreement"] == 0.5


def test_agreement_run_on_a_few_frames() -> None:
    pytest.importorskip("mediapipe")
    from ferkit.bench.agreement import run

    r = run(samples_dir() / "expressions_pexels_640x360.mp4", weights="tfe-jl", detect_every=3, max_frames=6,
            modes=("tracked_detector_eyes",))
    m = r["modes"]["tracked_detector_eyes"]
    assert m["frames"] == 6 and 0 <= m["agreement"] <= 1 and 0 <= m["agreement_smoothed"] <= 1
    assert m["detector_runs"] == 2 and m["followed_frames"] == 4  # frames 0 and 3 detected, the rest followed
    assert r["reference"] == "every_frame_mesh" and r["engine"] in ("onnx", "onnx-int8", "torch")


def test_auto_uses_a_shipped_int8_file_only_when_it_matches_and_was_validated(tmp_path: Path, cache: Path) -> None:
    import json

    from tests.fixtures.datasets import make_ferplus_tree

    from ferkit.cli import main
    from ferkit.export.onnx import record_validation

    crops = tmp_path / "FER2013Valid"
    make_ferplus_tree(crops, n=16)
    shipped = tmp_path / "weights"
    shipped.mkdir()
    ferplus = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]
    ckpt = torch.load(_checkpoint(tmp_path, classes=ferplus), weights_only=False)
    torch.save(ckpt["modules"]["model"], shipped / "tiny.pt")  # a shipped card: <name>.json + <name>.pt
    card = shipped / "tiny.json"
    Weights.from_dict({**ckpt["weights_meta"], "name": "tiny", "file": "tiny.pt"}).save_card(card)
    int8 = shipped / "tiny.int8.onnx"
    assert main(["export-onnx", "--weights", str(card), "--out", str(int8), "--int8", "--calibration", str(crops),
                 "--calibration-size", "8", "--validate", str(crops), "--json"]) == 0
    from ferkit.export.onnx import OnnxModel

    v = OnnxModel(int8).export_info["quantization"]["validation"]
    assert v["n"] > 0 and v["drop_points"] == pytest.approx(100 * (v["float_accuracy"] - v["int8_accuracy"]), abs=1e-3)
    record_validation(int8, {**v, "drop_points": 0.2})
    pred = Predictor(card, device="cpu")
    assert pred.engine == "onnx-int8" and pred.model.quantized and "0.20 points below float" in pred.engine_note
    record_validation(int8, {**v, "drop_points": -0.1})  # int8 scored higher than float
    assert "0.10 points above float" in Predictor(card, device="cpu").engine_note
    assert Predictor(card, device="cpu", engine="onnx").engine == "onnx"  # asked for float: float
    record_validation(int8, {**v, "drop_points": 0.8})  # costs too much accuracy: not used
    pred = Predictor(card, device="cpu")
    assert pred.engine == "onnx" and "at most 0.5" in pred.engine_note
    record_validation(int8, {**v, "drop_points": 0.2})
    state = torch.load(shipped / "tiny.pt", weights_only=False)
    next(iter(state.values())).add_(1.0)
    torch.save(state, shipped / "tiny.pt")  # the weights changed after the int8 file was made
    pred = Predictor(card, device="cpu")
    assert pred.engine == "onnx" and "other weights" in pred.engine_note
    assert json.loads(card.read_text())["name"] == "tiny"
