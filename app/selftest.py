"""``ferkit-app --selftest``: is this installation (source or frozen) complete and working?

Loads every shipped model, runs the face pipeline and each model on a bundled sample photo and
on a frame of the sample video, builds the main window offscreen, and prints one JSON summary.
Exit status 0 when everything worked, 1 otherwise; the packaging step runs it on each build.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
import traceback
from typing import Any, Callable


def _run_check(checks: dict[str, Any], name: str, fn: Callable[[], Any]) -> Any:
    """Run one check, record ok / time (or the error) under ``name``; its result, None when it failed.

    A failing check must not stop the others: the summary is worth most when several things are broken.
    """
    t0 = time.perf_counter()
    try:
        out = fn()
        checks[name] = {"ok": True, "ms": round((time.perf_counter() - t0) * 1e3, 1),
                        **(out if isinstance(out, dict) else {})}
        return out
    except Exception as exc:
        checks[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                        "trace": traceback.format_exc(limit=3)}
        return None


def _sample_video_frame(into: list[Any]) -> dict[str, Any]:
    """Decode the sample video's first frame (appended to ``into``): the video decoder works."""
    from app.core.sources import VideoFile, sample_video

    v = VideoFile(sample_video(), loop=False)
    frame = v.read()
    v.close()
    if frame is None:
        raise RuntimeError("no frame decoded")
    into.append(frame)
    return {"shape": list(frame.shape), "fps": round(v.fps, 3)}


def _model_report(an: Any, name: str, pictures: dict[str, Any]) -> dict[str, Any]:
    """Run shipped weights ``name`` on each sample picture (label -> RGB, None when it did not load).

    Raises when a picture has no face or the scores do not sum to 1; also runs the gate maps and
    the synthesis of models that have them, on the last picture's first face.
    """
    import numpy as np

    an.set_models(name)
    h = an.primary
    out: dict[str, Any] = {"architecture": h.weights.architecture, "classes": len(h.classes),
                           "identity": h.has_identity, "gates": h.has_gates, "synthesis": h.has_synthesis}
    for label, pic in pictures.items():
        if pic is None:
            continue
        res = an.analyze(pic, track=False)
        if not res.faces:
            raise RuntimeError(f"no face found in the sample {label}")
        sc = res.faces[0].scores[h.name]
        if not np.isclose(sc.raw.sum(), 1.0, atol=1e-4):
            raise RuntimeError(f"scores on the sample {label} do not sum to 1")
        # every class for expression models; the top 5 for identity nets with hundreds of classes
        order = np.argsort(-sc.raw)[: (len(h.classes) if len(h.classes) <= 10 else 5)]
        out[label] = {"faces": len(res.faces), "label": sc.label,
                      "scores": {h.classes[i]: round(float(sc.raw[i]), 4) for i in order},
                      "ms": {k: round(v, 1) for k, v in res.timings_ms.items()}}
    crop = res.faces[0].crops[h.preprocessing]
    if h.has_gates:
        out["gate_maps"] = len(h.forward_gates([crop]).gates)
    if h.has_synthesis:
        out["synthesis_shape"] = list(h.synthesize(crop, [0, 1]).shape)
    return out


def _check_models(models: dict[str, Any], an: Any, names: list[str], pictures: dict[str, Any]) -> None:
    """One entry per shipped weights in ``models``: its :func:`_model_report` and time, or the error."""
    for name in names:
        if an is None:
            models[name] = {"ok": False, "error": "face pipeline unavailable"}
            continue
        t0 = time.perf_counter()
        try:
            models[name] = {"ok": True, **_model_report(an, name, pictures),
                            "ms": round((time.perf_counter() - t0) * 1e3, 1)}
        except Exception as exc:
            models[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def _main_window_report(device: str) -> dict[str, Any]:
    """Build the main window offscreen and close it: the GUI modules and their resources are all there."""
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([sys.argv[0]])
    from app.main_window import MainWindow

    w = MainWindow(device=device)
    tabs = [w.tabs.tabText(i) for i in range(w.tabs.count())]
    w.shutdown()
    w.deleteLater()
    app.processEvents()
    return {"tabs": tabs, "platform": app.platformName()}


def run_selftest(device: str = "auto") -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    summary: dict[str, Any] = {"ok": False, "python": platform.python_version(), "frozen": bool(getattr(sys, "frozen", False)),
                               "checks": {}, "models": {}}
    checks = summary["checks"]
    t_start = time.perf_counter()

    from ferkit.models.weights import list_weights, resolve_device
    from ferkit.paths import resources_dir

    from app.core.analyzer import FrameAnalyzer
    from app.core.models import ModelCache, configure_torch_threads
    from app.core.sources import load_image, sample_image

    summary["torch_threads"] = configure_torch_threads()
    summary["resources"] = str(resources_dir())
    summary["device"] = str(resolve_device(device))
    names = list_weights()
    summary["shipped_weights"] = names
    image = _run_check(checks, "sample_image", lambda: {"shape": list(load_image(sample_image()).shape)})
    frames: list[Any] = []
    _run_check(checks, "sample_video", lambda: _sample_video_frame(frames))
    cache = ModelCache()
    analyzers: list[Any] = []
    _run_check(checks, "face_pipeline", lambda: analyzers.append(FrameAnalyzer(cache, device=device, track=False)))
    an = analyzers[0] if analyzers else None
    photo = load_image(sample_image()) if image else None
    _check_models(summary["models"], an, names, {"image": photo, "video_frame": frames[0] if frames else None})
    _run_check(checks, "main_window", lambda: _main_window_report(device))
    if an is not None:
        an.close()
    if not names:
        checks["weights"] = {"ok": False, "error": "no shipped weights in resources/weights"}
    summary["ok"] = all(c.get("ok") for c in checks.values()) and all(m.get("ok") for m in summary["models"].values())
    summary["seconds"] = round(time.perf_counter() - t_start, 2)
    for c in checks.values():
        c.pop("trace", None) if c.get("ok") else None
    print(json.dumps(summary, indent=1, default=str))
    return 0 if summary["ok"] else 1
