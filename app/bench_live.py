"""``python -m app.bench_live``: frames per second of the real live pipeline on the sample video.

Runs the main window offscreen exactly as a user sees it (capture worker -> inference worker ->
drawing and panels on the GUI thread), with ``tfe-jl`` selected and the synthesis strip open
(its worker running), and prints one JSON object.

Two modes:
  default       throughput: the capture worker decodes the next frame as soon as the inference
                worker is idle (no frame dropped, nothing paced), so fps is what the pipeline can
                sustain on this machine.
  --realtime    the video plays at its own rate (23.98 fps); reports displayed fps, dropped
                frames and end-to-end latency (read -> drawn).

    python -m app.bench_live [--frames 300] [--weights tfe-jl] [--panel synthesis|gates|scores]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _parse_args(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m app.bench_live")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--weights", default="tfe-jl")
    ap.add_argument("--panel", default="synthesis", choices=["synthesis", "gates", "scores"])
    ap.add_argument("--interval", type=float, default=None, help="gates/synthesis refresh interval (s)")
    ap.add_argument("--realtime", action="store_true")
    ap.add_argument("--device", default="auto")
    return ap.parse_args(argv)


class _FrameLog:
    """What each displayed frame reports, kept from the first frame after the warm-up on.

    Connected to the window's ``result_shown``: timings are taken where the user sees the frame.
    """

    def __init__(self, window, warmup: int, frames: int) -> None:
        self.window = window
        self.warmup = warmup
        self.total = frames + warmup
        self.times: list[float] = []
        self.stages: dict[str, list[float]] = {}
        self.faces: list[int] = []
        #: process CPU time at the first measured frame and at the last one
        self.cpu_at: list[float] = []

    def record(self, r) -> None:
        self.times.append(time.perf_counter())
        if len(self.times) == self.warmup + 1 or len(self.times) == self.total:
            self.cpu_at.append(time.process_time())
        if len(self.times) > self.warmup:
            for k, v in {**r.timings_ms, "draw": self.window.view.draw_ms}.items():
                self.stages.setdefault(k, []).append(v)
            self.stages.setdefault("latency", []).append((time.perf_counter() - r.captured_at) * 1e3)
            self.faces.append(len(r.faces))

    @property
    def measured(self) -> list[float]:
        return self.times[self.warmup:]


def _report(args: argparse.Namespace, w, log: _FrameLog, explainer, ok: bool) -> dict:
    """The JSON summary: fps, per-stage times, the explainer's work, dropped frames and CPU cost."""
    import numpy as np
    import torch

    t = log.measured
    fps = (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 else 0.0
    cpu_at, stages, faces = log.cpu_at, log.stages, log.faces
    return {
        "mode": "realtime" if args.realtime else "throughput",
        "weights": args.weights, "panel": args.panel, "device": str(w.handles["primary"].device),
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "frames_measured": len(t), "complete": ok, "fps": round(fps, 2),
        "stage_ms_mean": {k: round(float(np.mean(v)), 2) for k, v in stages.items()},
        "stage_ms_p95": {k: round(float(np.percentile(v, 95)), 2) for k, v in stages.items()},
        "faces_per_frame": round(float(np.mean(faces)), 2) if faces else 0,
        "explainer_runs": explainer.runs, "explainer_last_ms": round(explainer.last_ms, 1),
        "explainer_interval_s": explainer.min_interval_s,
        "dropped_frames": w.slot.dropped,
        # what the status bar shows: frames skipped while analysis was busy (warm-up, model loads not counted)
        "skipped_frames": w.worker.skipped,
        # CPU time (all threads of this process) per displayed frame: on an otherwise idle machine
        # with N cores, fps cannot exceed N * 1000 / cpu_ms_per_frame
        "cpu_ms_per_frame": round((cpu_at[-1] - cpu_at[0]) * 1e3 / max(1, len(t) - 1), 2) if len(cpu_at) >= 2 else None,
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def main(argv=None) -> int:
    args = _parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([sys.argv[0]])
    from app.core.sources import sample_video
    from app.main_window import MainWindow
    from app.screenshots import wait_until

    w = MainWindow(device=args.device, weights=args.weights)
    w.resize(1280, 760)
    w.show()
    if not wait_until(app, lambda: w.handles.get("primary") is not None, 180):
        print(json.dumps({"error": f"weights {args.weights!r} could not be loaded"}))
        return 1
    if args.interval is not None:
        w.live_panel.interval.setValue(args.interval)
    panel = {"synthesis": w.synth_panel, "gates": w.gates_panel, "scores": w.scores_panel}[args.panel]
    w.tabs.setCurrentWidget(panel)
    w.play_video(sample_video(), realtime=args.realtime)
    if not args.realtime:
        w.sources.capture.backpressure = w.worker.idle
    log = _FrameLog(w, args.warmup, args.frames)
    w.result_shown.connect(log.record)
    explainer = w.explainers.workers["synthesis" if args.panel == "synthesis" else "gates"]
    ok = wait_until(app, lambda: len(log.times) >= log.total, 1800)
    out = _report(args, w, log, explainer, ok)
    w.shutdown()
    print(json.dumps(out, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
