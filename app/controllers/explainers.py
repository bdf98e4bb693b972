"""ConvFLU gates and expression synthesis of the shown face, on their own "latest wins" workers.

Which weights explain is decided once per model change (the selected model if it can, else the
first shipped weights whose model has what the panel shows — FERSNet today — found once per panel
by what the models have, never by name), never per frame. The compute is the
:mod:`app.core.explain` functions and the handle's own forward; the panels get plain dicts.
"""
from __future__ import annotations

import time
from typing import Any, Optional

from PySide6.QtCore import QObject, Signal

from ferkit.models.weights import Preprocessing, get_weights, list_weights, weights_with

from app.core.analyzer import TrackedFace
from app.core.explain import gate_arrays, gate_maps
from app.core.models import ModelCache
from app.core.state import AppState, LoadedModels
from app.workers import LatestWinsWorker

GATES, SYNTHESIS = "gates", "synthesis"
_FEATURE = {GATES: ("has_gates", "ConvFLU gates"), SYNTHESIS: ("has_synthesis", "synthesised faces")}


def compute_gates(cache: ModelCache, p: dict[str, Any]) -> dict[str, Any]:
    handle = cache.get(p["key"], p["device"])
    out = handle.forward_gates([p["crop"]])
    if not out.gates:
        raise RuntimeError(f"{handle.name} returned no gate maps")
    channels = handle.weights.gate_channels or {}
    arrays = gate_arrays(out.gates)
    return {"model": handle.name, "key": handle.key, "track_id": p["track_id"], "crop": p["crop"],
            "maps": gate_maps(arrays),
            "channel_maps": gate_maps(arrays, channels=channels) if channels else {},
            "channels": {k: (c, int(arrays[k].shape[0])) for k, c in channels.items() if k in arrays}}


def compute_synthesis(cache: ModelCache, p: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    handle = cache.get(p["key"], p["device"])
    images = handle.synthesize(p["crop"], list(range(len(handle.classes))))
    return {"model": handle.name, "key": handle.key, "track_id": p["track_id"], "crop": p["crop"],
            "classes": handle.classes, "images": images, "ms": (time.perf_counter() - t0) * 1e3}


class ExplainersController(QObject):
    gates_ready = Signal(object)
    synthesis_ready = Signal(object)
    gates_failed = Signal(str)
    synthesis_failed = Signal(str)
    #: (GATES | SYNTHESIS, notice text; empty when the selected model explains itself)
    notice = Signal(str, str)

    def __init__(self, state: AppState, cache: ModelCache, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.state = state
        #: weights both panels fall back on; None = per panel, the first shipped weights whose model can
        self.explainer: Optional[str] = None
        #: per panel, once looked up: (weights name, preprocessing) or None when nothing installed can
        self._fallback: dict[str, Optional[tuple[str, Preprocessing]]] = {}
        #: per panel: (weights key, preprocessing) or None when nothing here can compute it
        self.sources: dict[str, Optional[tuple[str, Preprocessing]]] = {GATES: None, SYNTHESIS: None}
        self.workers = {GATES: LatestWinsWorker(lambda p: compute_gates(cache, p), state.explain_interval),
                        SYNTHESIS: LatestWinsWorker(lambda p: compute_synthesis(cache, p), state.explain_interval)}
        self.workers[GATES].done.connect(self.gates_ready)
        self.workers[GATES].failed.connect(self.gates_failed)
        self.workers[SYNTHESIS].done.connect(self.synthesis_ready)
        self.workers[SYNTHESIS].failed.connect(self.synthesis_failed)

    def start(self) -> None:
        for w in self.workers.values():
            w.start()

    def stop(self, timeout_ms: int = 10000) -> None:
        for w in self.workers.values():
            w.stop(timeout_ms)

    def set_interval(self, seconds: float) -> None:
        self.state.explain_interval = seconds
        for w in self.workers.values():
            w.min_interval_s = seconds

    def fallback(self, panel: str) -> Optional[tuple[str, Preprocessing]]:
        """The weights ``panel`` falls back on and their preprocessing, looked up once (None when none is installed)."""
        if panel not in self._fallback:
            self._fallback[panel] = None
            found = [self.explainer] if self.explainer is not None else weights_with(panel)
            if found and found[0] in list_weights():
                try:
                    self._fallback[panel] = (found[0], get_weights(found[0]).preprocessing)
                except (OSError, ValueError):  # a damaged card is reported when the panel loads it
                    pass
        return self._fallback[panel]

    def on_models_loaded(self, loaded: LoadedModels) -> set[Preprocessing]:
        """Decide (once per model change) which weights explain and say so; returns the crops they need."""
        primary = loaded.primary
        for panel, (feature, what) in _FEATURE.items():
            if primary is not None and getattr(primary, feature):
                self.sources[panel] = (primary.key, primary.preprocessing)
                self.notice.emit(panel, "")
                continue
            self.sources[panel] = self.fallback(panel)
            if self.sources[panel] is None:
                self.notice.emit(panel, f"No model here can show {what}: the selected model has none and no weights "
                                        "in resources/weights have them (FERSNet's do).")
            else:
                name = primary.name if primary is not None else "(none)"
                self.notice.emit(panel, f"The selected model '{name}' has no {what}; this panel uses the shipped "
                                        f"weights '{self.sources[panel][0]}' on the same face.")
        return {s[1] for s in self.sources.values() if s is not None}

    def submit(self, panel: str, face: Optional[TrackedFace]) -> None:
        """Explain ``face`` in ``panel`` (the newest face wins; nothing when its crop is not aligned yet)."""
        source = self.sources.get(panel)
        if face is None or source is None:
            return
        crop = face.crops.get(source[1])
        if crop is None:
            return  # the worker has not aligned for this model yet (configuration in flight)
        self.workers[panel].submit({"key": source[0], "crop": crop, "track_id": face.track_id,
                                    "device": self.state.live.device})
