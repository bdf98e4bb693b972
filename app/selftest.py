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
from typing import Any


def run_selftest(device: str = "auto") -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    summary: dict[str, Any] = {"ok": False, "python": platform.python_version(), "frozen": bool(getattr(sys, "frozen", False)),
                               "checks": {}, "models": {}}
    checks = summary["checks"]
    t_start = time.perf_counter()

    def check(name: str, fn) -> Any:
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

    import numpy as np

    from ferkit.models.weights import list_weights, resolve_device
    from ferkit.paths import resources_dir

    from app.core.analyzer import FrameAnalyzer
    from app.core.models import ModelCache, configure_torch_threads
    from app.core.sources import VideoFile, load_image, sample_image, sample_video

    summary["torch_threads"] = configure_torch_threads()
    summary["resources"] = str(resources_dir())
    summary["device"] = str(resolve_device(device))
    names = list_weights()
    summary["shipped_weights"] = names
    image = check("sample_image", lambda: {"shape": list(load_image(sample_image()).shape)})

    def video_frame() -> dict:
        v = VideoFile(sample_video(), loop=False)
        frame = v.read()
        v.close()
        if frame is None:
            raise RuntimeError("no frame decoded")
        summary["_frame"] = frame
        return {"shape": list(frame.shape), "fps": round(v.fps, 3)}

    check("sample_video", video_frame)
    frame = summary.pop("_frame", None)
    cache = ModelCache()
    analyzer = check("face_pipeline", lambda: {"_a": FrameAnalyzer(cache, device=device, track=False)})
    an = analyzer["_a"] if analyzer else None
    if an is not None:
        checks["face_pipeline"].pop("_a", None)
    photo = load_image(sample_image()) if image else None
    for name in names:
        def one(name=name) -> dict:
            an.set_models(name)
            h = an.primary
            out: dict[str, Any] = {"architecture": h.weights.architecture, "classes": len(h.classes),
                                   "identity": h.has_identity, "gates": h.has_gates, "synthesis": h.has_synthesis}
            for label, pic in (("image", photo), ("video_frame", frame)):
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

        if an is None:
            summary["models"][name] = {"ok": False, "error": "face pipeline unavailable"}
            continue
        t0 = time.perf_counter()
        try:
            summary["models"][name] = {"ok": True, **one(), "ms": round((time.perf_counter() - t0) * 1e3, 1)}
        except Exception as exc:
            summary["models"][name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    def gui() -> dict:
        from PySide6.QtWidgets import QApplication

        app = QApplication.instance() or QApplication([sys.argv[0]])
        from app.main_window import MainWindow

        w = MainWindow(device=device)
        tabs = [w.tabs.tabText(i) for i in range(w.tabs.count())]
        w.shutdown()
        w.deleteLater()
        app.processEvents()
        return {"tabs": tabs, "platform": app.platformName()}

    check("main_window", gui)
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
