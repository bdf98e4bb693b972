"""End-to-end pipeline speed on a video: decode -> faces -> align -> infer [-> synthesise] -> draw.

This is the loop the live app runs per frame, without Qt (the library never imports it): OpenCV
decodes the video at its native resolution (or a still image is "decoded" again every frame, for
the 5-face ``multi_face.jpg`` looped as a video), the face path finds the faces, and
:meth:`~ferkit.inference.Predictor.score_faces` -- the very call the app's frame analyzer and
``ferkit predict`` make -- aligns every face, scores all of them in one batch (the predictor's
engine, thread setting and the card's TTA) and re-detects followed faces with an ambiguous label;
optionally FERSNet re-synthesises every face in every expression, and the result is drawn onto
the frame with OpenCV.

Face paths (``faces``): ``tracked`` (:class:`~ferkit.face.pipeline.TrackedFacePipeline`:
detector and face mesh every ``detect_every`` frames, optical flow between, and followed faces
whose label is ambiguous detected again -- the ``verify`` stage; the live default),
``tracked-detector-eyes`` (the same without any mesh: the detector's eye points),
``tracked-mesh`` (tracked plus face mesh on every frame, as when a landmarks panel is open),
``mesh`` (detector + face mesh on every frame, the former live path) and ``detector`` (detector
on every frame, no mesh).

Figures: frame time per frame (median and p95, and the fps they mean), fps of each pass (frames
over wall time), per-stage milliseconds, peak RSS. It runs in a child process (``python -m
ferkit.bench.pipeline``) so that the peak resident memory it reports is that of the pipeline
alone, and so that ``ferkit bench`` can start a background load next to it.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np
import torch

from ferkit.bench.stats import summary
from ferkit.data.images import IMAGE_EXTENSIONS
from ferkit.errors import NotFoundError, UnknownNameError, UsageError
from ferkit.utils.io import atomic_torch_save

#: set by main() (the child's flag), reported with the figures
FLUSH_DENORMAL_STATE = {"on": False}
STAGES = ("decode", "detect", "align", "infer", "verify", "synthesis", "draw")
FACE_PATHS = ("tracked", "tracked-detector-eyes", "tracked-mesh", "mesh", "detector")


def _rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    ``VmHWM`` is per address space, so it restarts at exec; ``ru_maxrss`` does not on Linux (a
    child forked from a big benchmark process would report the parent's peak).
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _weights_source(weights: str) -> tuple[str, bool]:
    """(something Predictor loads, trained) for shipped weights, a card/checkpoint, or an architecture.

    An architecture with no shipped weights is built untrained (speed does not depend on weight
    values) with a fixed seed and saved as a checkpoint, so its ONNX export is cached like any other.
    """
    from ferkit.models.weights import list_weights

    if weights in list_weights() or Path(weights).exists():
        return weights, True
    from ferkit.bench.models import _fresh
    from ferkit.models.registry import list_models

    arch = weights if weights in list_models() else weights.replace("-", "_")
    if arch not in list_models():
        raise UnknownNameError(f"{weights!r} is neither shipped weights nor an architecture ({', '.join(list_models())})")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        bm = _fresh(arch)
    path = Path(tempfile.gettempdir()) / f"ferkit-bench-{arch}.pt"
    atomic_torch_save({"weights_meta": bm.weights.to_dict(), "modules": {"model": bm.model.state_dict()}}, path)
    return str(path), False


def _synthesiser(weights: str, device: str) -> tuple[Any, Any, str]:
    from ferkit.bench.models import _fresh
    from ferkit.models.weights import list_weights, load_weights

    if weights in list_weights() or Path(weights).exists():
        lm = load_weights(weights, device=device)
        model, w, label = lm.model.eval(), lm.weights, lm.weights.name
    else:
        bm = _fresh(weights if weights.startswith("fersnet") else weights.replace("-", "_"))
        model, w, label = bm.model.to(device).eval(), bm.weights, bm.label
    if not getattr(model, "has_synthesis", False):
        raise UsageError(f"{weights} has no synthesis stream")
    return model, w, label


def _face_path(faces: str, detect_every: int, max_faces: int = 5) -> Any:
    from ferkit.face.pipeline import FacePipeline, TrackedFacePipeline

    if faces in ("tracked", "tracked-mesh", "tracked-detector-eyes"):
        return TrackedFacePipeline(max_faces=max_faces, detect_every=detect_every,
                                   keyframe_mesh=faces != "tracked-detector-eyes")
    if faces in ("mesh", "detector"):
        return FacePipeline(max_faces=max_faces, landmarks=faces == "mesh")
    raise UsageError(f"faces must be one of {', '.join(FACE_PATHS)}, not {faces!r}")


class _Frames:
    """Frames of a video (looped when shorter than asked), or one image repeated as a video."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.still: Optional[np.ndarray] = None
        self.cap = None
        if source.suffix.lower() in IMAGE_EXTENSIONS:
            from ferkit.data.images import read_image

            self.still = cv2.cvtColor(read_image(source), cv2.COLOR_RGB2BGR)
        else:
            self.cap = cv2.VideoCapture(str(source))
            if not self.cap.isOpened():
                raise NotFoundError(f"cannot open video {source}")

    def read(self) -> tuple[np.ndarray, bool]:
        """(BGR frame, whether the video restarted: a jump the face tracker must be told about)."""
        if self.still is not None:
            return self.still.copy(), False  # a copy, as decoding would give a fresh buffer
        ok, bgr = self.cap.read()
        if ok:
            return bgr, False
        self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        ok, bgr = self.cap.read()
        if not ok:
            raise UsageError(f"{self.source}: no frames could be decoded")
        return bgr, True

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()


def _frame(rgb: np.ndarray, pipeline: Any, predictor: Any, want_landmarks: bool, synth: Any, synth_w: Any,
           dev: torch.device, times: dict[str, float]) -> int:
    """One frame after decoding: detect, the app's scoring call, [synthesis,] draw; ``times`` gets each
    stage (seconds). Returns the number of faces."""
    from ferkit.models.weights import crops_to_tensor, to_model_input

    t1 = time.perf_counter()
    found = pipeline.detect(rgb, landmarks=True) if want_landmarks else pipeline.detect(rgb)
    found = found[: predictor.max_faces]
    t2 = time.perf_counter()
    times["detect"] = t2 - t1
    # the app's call: align (for the explainer too), score, re-detect ambiguous followed faces
    scored = predictor.score_faces(rgb, found, pipeline, also=[synth_w.preprocessing] if synth is not None else [],
                                   timings=times)
    found = scored.faces
    labels = [predictor.classes[int(i)] for i in scored.probs.argmax(1)] if found else []
    t4 = time.perf_counter()
    thumbs = None
    if synth is not None and found:
        xs = to_model_input(crops_to_tensor(scored.crops[synth_w.preprocessing]).to(dev), synth_w.preprocessing)
        faces_all = synth.synthesize_all(xs)  # [B, E, C, H, W]
        thumbs = (synth_w.preprocessing.denormalize(faces_all) * 255).to(torch.uint8).cpu().numpy()
    t5 = time.perf_counter()
    times["synthesis"] = t5 - t4
    for f, lab in zip(found, labels):
        x0, y0, bw, bh = f.box
        cv2.rectangle(rgb, (x0, y0), (x0 + bw, y0 + bh), (0, 200, 255), 2)
        cv2.putText(rgb, lab, (x0, max(12, y0 - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 200, 255), 1)
    if thumbs is not None:  # a strip of every expression of the first face, top-left
        strip = np.concatenate([t[0] for t in thumbs[0]], axis=1)
        strip = cv2.cvtColor(strip, cv2.COLOR_GRAY2RGB) if strip.ndim == 2 else strip
        h = min(strip.shape[0], rgb.shape[0])
        wdt = min(strip.shape[1], rgb.shape[1])
        rgb[:h, :wdt] = strip[:h, :wdt]
    times["draw"] = time.perf_counter() - t5
    return len(found)


@torch.inference_mode()  # scoped, never a global switch: callers (and tests) may train afterwards
def run(video: Path, weights: str = "tfe-jl", engine: str = "auto", synthesis: Optional[str] = None,
        frames: int = 120, passes: int = 3, faces: str = "tracked", device: str = "cpu",
        warmup_frames: int = 10, threads: Optional[int] = 1, detect_every: int = 5) -> dict[str, Any]:
    """Time the live loop on ``video`` (a video file, or an image repeated as one); see the module docstring."""
    from ferkit.inference import Predictor

    rss_start = _rss_mb()
    source, trained = _weights_source(weights)
    predictor = Predictor(source, device=device, engine=engine, threads=threads)
    synth = synth_w = synth_label = None
    if synthesis:
        synth, synth_w, synth_label = _synthesiser(synthesis, device)
    pipeline = _face_path(faces, detect_every)
    want_landmarks = faces == "tracked-mesh"
    dev = torch.device(device)
    rss_loaded = None
    per_stage: dict[str, list[float]] = {s: [] for s in STAGES}
    frame_ms: list[float] = []
    fps: list[float] = []
    faces_seen: list[int] = []
    size = None
    frames_in = _Frames(Path(video))
    try:
        for _ in range(passes):
            if hasattr(pipeline, "reset"):
                pipeline.reset()
            n_done = 0
            t_pass = time.perf_counter()
            while n_done < frames + warmup_frames:
                times = {}
                t = time.perf_counter()
                bgr, restarted = frames_in.read()
                if restarted and hasattr(pipeline, "reset"):
                    pipeline.reset()
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                size = (rgb.shape[1], rgb.shape[0])
                t1 = time.perf_counter()
                times["decode"] = t1 - t
                n_faces = _frame(rgb, pipeline, predictor, want_landmarks, synth, synth_w, dev, times)
                t6 = time.perf_counter()
                n_done += 1
                if n_done == warmup_frames:
                    t_pass = time.perf_counter()
                    if rss_loaded is None:
                        rss_loaded = _rss_mb()
                elif n_done > warmup_frames:
                    for k, v in times.items():
                        per_stage[k].append(v * 1e3)
                    frame_ms.append((t6 - t) * 1e3)
                    faces_seen.append(n_faces)
            fps.append(frames / (time.perf_counter() - t_pass))
    finally:
        frames_in.close()
        pipeline.close()
    stages = {k: summary(v) for k, v in per_stage.items() if synth is not None or k != "synthesis"}
    frame = summary(frame_ms)
    return {"video": str(video), "resolution": list(size) if size else None, "weights": predictor.weights.name,
            "trained": trained, "engine": predictor.engine, "engine_requested": engine,
            "engine_reason": predictor.engine_reason, "tta": predictor.tta, "synthesis": synth_label,
            "faces": faces, "detect_every": detect_every if faces.startswith("tracked") else 1,
            "landmarks": faces in ("mesh", "tracked-mesh"), "device": device, "threads": threads,
            "frames_per_pass": frames, "passes": passes, "fps": summary(fps, digits=1), "frame_ms": frame,
            "fps_at_median_frame": round(1e3 / frame["median"], 1) if frame["median"] else None,
            "stage_ms": stages, "faces_per_frame": summary(faces_seen, digits=2),
            "face_path_stats": dict(getattr(pipeline, "stats", {})),
            "rss_mb": {"before_models": round(rss_start, 1), "after_load_and_warmup": round(rss_loaded or 0, 1),
                       "peak": round(max(_rss_mb(), rss_start, rss_loaded or 0.0), 1)},
            "torch_threads": torch.get_num_threads(), "flush_denormal": FLUSH_DENORMAL_STATE["on"]}


def run_in_child(timeout_s: float = 600, load_cores: int = 0, **kwargs: Any) -> dict[str, Any]:
    """``run`` in a fresh interpreter, so ``rss_mb`` is the pipeline's own memory.

    ``load_cores`` > 0 keeps that many cores busy (:func:`ferkit.bench.load.background_load`)
    while the child runs; the load is stopped whatever happens.
    """
    from ferkit.bench.load import json_row_in_child

    args = [sys.executable, "-m", "ferkit.bench.pipeline", "--video", str(kwargs.pop("video"))]
    for k, v in kwargs.items():
        if v is None or v is False:
            continue
        flag = "--" + k.replace("_", "-")
        args += [flag] if v is True else [flag, str(v)]
    row = json_row_in_child(args, timeout_s=timeout_s, load_cores=load_cores)
    if "error" in row:
        row.update({k: str(v) for k, v in kwargs.items()})
    return row


def load_ratio(idle: dict[str, Any], loaded: dict[str, Any]) -> dict[str, Any]:
    """How much slower the loop ran under load: median and p95 frame time, loaded / idle (goal <= 1.5)."""
    out: dict[str, Any] = {"goal": 1.5}
    for key in ("median", "p95"):
        a, b = idle.get("frame_ms", {}).get(key), loaded.get("frame_ms", {}).get(key)
        out[f"frame_ms_{key}"] = round(b / a, 2) if a and b else None
    return out


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ferkit.bench.pipeline", description=__doc__.splitlines()[0])
    p.add_argument("--video", type=Path, required=True, help="video file, or an image to repeat as a video")
    p.add_argument("--weights", default="tfe-jl")
    p.add_argument("--engine", choices=["auto", "torch", "onnx", "onnx-int8"], default="auto")
    p.add_argument("--synthesis", default=None, help="FERSNet weights (or architecture) to synthesise with")
    p.add_argument("--frames", type=int, default=120)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--faces", choices=FACE_PATHS, default="tracked")
    p.add_argument("--detect-every", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of the face batch (default 1)")
    p.add_argument("--keep-denormals", action="store_true")
    a = p.parse_args(argv)
    if not a.keep_denormals:
        from ferkit.bench.stats import flush_denormals

        FLUSH_DENORMAL_STATE["on"] = flush_denormals()
    if a.threads:  # the whole process as the app configures it (synthesis, mediapipe's neighbours)
        torch.set_num_threads(a.threads)
    print(json.dumps(run(a.video, a.weights, a.engine, a.synthesis, a.frames, a.passes, a.faces, a.device,
                         threads=a.threads, detect_every=a.detect_every)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
