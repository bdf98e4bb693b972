"""End-to-end pipeline speed on a video: decode -> detect -> align -> infer [-> synthesise] -> draw.

This is the loop the live app runs per frame, without Qt (the library never imports it): OpenCV
decodes the video at its native resolution, ``FacePipeline`` detects (mediapipe face detection,
plus face mesh for the eye centres when ``landmarks``), every face is aligned with the model's
preprocessing, all faces go through the classifier in one batch (torch eager or ONNX Runtime),
optionally FERSNet re-synthesises every face in every expression, and the result is drawn onto
the frame with OpenCV (boxes, labels, and the synthesised thumbnails).

It runs in a child process (``python -m ferkit.bench.pipeline``) so that the peak resident memory
it reports is that of the pipeline alone, not of the benchmark that launched it.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np
import torch

from ferkit.bench.stats import summary

#: set by main() (the child's flag), reported with the figures
FLUSH_DENORMAL_STATE = {"on": False}
STAGES = ("decode", "detect", "align", "infer", "synthesis", "draw")


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


def _classifier(weights: str, engine: str, device: str) -> tuple[Any, Any, str, bool]:
    """(callable x -> ModelOutput, Weights, label, trained) for shipped weights or an architecture name."""
    from ferkit.bench.models import _fresh
    from ferkit.models.weights import list_weights, load_weights

    if weights in list_weights() or Path(weights).exists():
        lm = load_weights(weights, device=device)
        model, w, label, trained = lm.model.eval(), lm.weights, lm.weights.name, True
    else:
        from ferkit.models.registry import list_models

        arch = weights if weights in list_models() else weights.replace("-", "_")
        if arch not in list_models():
            raise KeyError(f"{weights!r} is neither shipped weights nor an architecture ({', '.join(list_models())})")
        bm = _fresh(arch)  # no shipped weights: an untrained build (speed does not depend on weight values)
        model, w, label, trained = bm.model.to(device).eval(), bm.weights, bm.label, False
    if engine == "onnx":
        import tempfile

        from ferkit.export.onnx import OnnxModel, export_model

        path = Path(tempfile.mkdtemp(prefix="ferkit-bench-")) / "model.onnx"
        export_model(model.to("cpu"), w, path)
        return OnnxModel(path), w, label, trained
    return model, w, label, trained


@torch.inference_mode()  # scoped, never a global switch: callers (and tests) may train afterwards
def run(video: Path, weights: str = "tfe-jl", engine: str = "torch", synthesis: Optional[str] = None,
        frames: int = 120, passes: int = 3, landmarks: bool = True, device: str = "cpu",
        warmup_frames: int = 10) -> dict[str, Any]:
    from ferkit.face.pipeline import FacePipeline
    from ferkit.inference import crops_to_tensor

    rss_start = _rss_mb()
    model, w, label, trained = _classifier(weights, engine, device)
    prep = w.preprocessing
    synth = synth_w = None
    synth_label = None
    if synthesis:
        synth, synth_w, synth_label, _ = _classifier(synthesis, "torch", device)
        if not getattr(synth, "has_synthesis", False):
            raise ValueError(f"{synthesis} has no synthesis stream")
    pipeline = FacePipeline(max_faces=5, landmarks=landmarks)
    dev = torch.device(device)
    rss_loaded = None
    per_stage: dict[str, list[float]] = {s: [] for s in STAGES}
    fps: list[float] = []
    faces_seen: list[int] = []
    size = None
    for p in range(passes):
        cap = cv2.VideoCapture(str(video))
        if not cap.isOpened():
            raise FileNotFoundError(f"cannot open video {video}")
        n_done = 0
        t_pass = None
        while n_done < frames + warmup_frames:
            times = {}
            t = time.perf_counter()
            ok, bgr = cap.read()
            if not ok:  # loop the video when it is shorter than the frame count
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, bgr = cap.read()
                if not ok:
                    raise RuntimeError(f"{video}: no frames could be decoded")
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            size = (rgb.shape[1], rgb.shape[0])
            t1 = time.perf_counter()
            times["decode"] = t1 - t
            faces = pipeline.detect(rgb)
            t2 = time.perf_counter()
            times["detect"] = t2 - t1
            crops = [pipeline.align(rgb, f, prep) for f in faces]
            synth_crops = [pipeline.align(rgb, f, synth_w.preprocessing) for f in faces] if synth is not None else []
            t3 = time.perf_counter()
            times["align"] = t3 - t2
            labels: list[str] = []
            if crops:
                x = prep.normalize(crops_to_tensor(crops).to(dev))
                out = model(x)
                probs = out.probabilities.cpu().numpy()
                labels = [w.classes[int(i)] for i in probs.argmax(1)]
            t4 = time.perf_counter()
            times["infer"] = t4 - t3
            thumbs = None
            if synth is not None and synth_crops:
                xs = synth_w.preprocessing.normalize(crops_to_tensor(synth_crops).to(dev))
                faces_all = synth.synthesize_all(xs)  # [B, E, C, H, W]
                thumbs = (synth_w.preprocessing.denormalize(faces_all) * 255).to(torch.uint8).cpu().numpy()
            t5 = time.perf_counter()
            times["synthesis"] = t5 - t4
            for f, lab in zip(faces, labels):
                x0, y0, bw, bh = f.box
                cv2.rectangle(rgb, (x0, y0), (x0 + bw, y0 + bh), (0, 200, 255), 2)
                cv2.putText(rgb, lab, (x0, max(12, y0 - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 200, 255), 1)
            if thumbs is not None:  # a strip of every expression of the first face, top-left
                strip = np.concatenate([t[0] for t in thumbs[0]], axis=1)
                strip = cv2.cvtColor(strip, cv2.COLOR_GRAY2RGB) if strip.ndim == 2 else strip
                h = min(strip.shape[0], rgb.shape[0])
                wdt = min(strip.shape[1], rgb.shape[1])
                rgb[:h, :wdt] = strip[:h, :wdt]
            t6 = time.perf_counter()
            times["draw"] = t6 - t5
            n_done += 1
            if n_done == warmup_frames:
                t_pass = time.perf_counter()
                if rss_loaded is None:
                    rss_loaded = _rss_mb()
            elif n_done > warmup_frames:
                for k, v in times.items():
                    per_stage[k].append(v * 1e3)
                faces_seen.append(len(faces))
        fps.append(frames / (time.perf_counter() - t_pass))
        cap.release()
    pipeline.close()
    stages = {k: summary(v) for k, v in per_stage.items() if synth is not None or k != "synthesis"}
    return {"video": str(video), "resolution": list(size) if size else None, "weights": label, "trained": trained,
            "engine": engine, "synthesis": synth_label, "landmarks": landmarks, "device": device,
            "frames_per_pass": frames, "passes": passes, "fps": summary(fps, digits=1),
            "stage_ms": stages, "faces_per_frame": summary(faces_seen, digits=2),
            "rss_mb": {"before_models": round(rss_start, 1), "after_load_and_warmup": round(rss_loaded or 0, 1),
                       "peak": round(max(_rss_mb(), rss_start, rss_loaded or 0.0), 1)},
            "torch_threads": torch.get_num_threads(), "flush_denormal": FLUSH_DENORMAL_STATE["on"]}


def run_in_child(timeout_s: float = 600, **kwargs: Any) -> dict[str, Any]:
    """``run`` in a fresh interpreter, so ``rss_mb`` is the pipeline's own memory."""
    import subprocess

    args = [sys.executable, "-m", "ferkit.bench.pipeline", "--video", str(kwargs.pop("video"))]
    if "landmarks" in kwargs:
        args.append("--landmarks" if kwargs.pop("landmarks") else "--no-landmarks")
    for k, v in kwargs.items():
        if v is None or v is False:
            continue
        flag = "--" + k.replace("_", "-")
        args += [flag] if v is True else [flag, str(v)]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s (machine busy? try fewer --frames/--passes)",
                **{k: str(v) for k, v in kwargs.items()}}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        return {"error": " | ".join(tail) or f"exit {proc.returncode}", **{k: str(v) for k, v in kwargs.items()}}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ferkit.bench.pipeline", description=__doc__.splitlines()[0])
    p.add_argument("--video", type=Path, required=True)
    p.add_argument("--weights", default="tfe-jl")
    p.add_argument("--engine", choices=["torch", "onnx"], default="torch")
    p.add_argument("--synthesis", default=None, help="FERSNet weights (or architecture) to synthesise with")
    p.add_argument("--frames", type=int, default=120)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--no-landmarks", dest="landmarks", action="store_false")
    p.add_argument("--landmarks", dest="landmarks", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--keep-denormals", action="store_true")
    a = p.parse_args(argv)
    if not a.keep_denormals:
        from ferkit.bench.stats import flush_denormals

        FLUSH_DENORMAL_STATE["on"] = flush_denormals()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(json.dumps(run(a.video, a.weights, a.engine, a.synthesis, a.frames, a.passes, a.landmarks, a.device)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
