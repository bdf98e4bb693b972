"""What the app is showing and working on, kept apart from every widget (no Qt here).

Like napari's ``components`` beside its Qt layer: the controllers (:mod:`app.controllers`) change
this state and the window paints it, so the state can be built and checked in tests without a
display, and no widget is the only place a fact lives (the selected model is not "whatever the
combo box says"). Nothing here imports PySide6; a test imports it with Qt blocked.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from ferkit.face.tracking import Smoother

from app.core.analyzer import FrameResult, TrackedFace, pick_face
from app.core.enrolment import EnrolmentStore
from app.core.identity import IdentityChoice, rematch

#: modes of the source state
VIDEO, CAMERA, IMAGE = "video", "camera", "image"


@dataclass
class LoadedModels:
    """The handles the inference worker loaded for the current configuration (set when it reports)."""

    primary: Any = None  # app.core.models.ModelHandle
    comparison: list[Any] = field(default_factory=list)
    device: str = "auto"
    identity: IdentityChoice = field(default_factory=IdentityChoice)


@dataclass
class LiveSettings:
    """The Live tab's choices, as the inference worker is configured with them."""

    device: str = "auto"
    max_faces: int = 5
    detector: str = "near"
    smoother: Smoother = field(default_factory=Smoother)


@dataclass
class SourceState:
    """Where frames come from now, and what went wrong with it (shown in the window, not only logged)."""

    mode: Optional[str] = None  # VIDEO | CAMERA | IMAGE
    path: Optional[Path] = None
    description: str = ""
    error: str = ""
    paused: bool = False
    loop: bool = True

    @property
    def live(self) -> bool:
        """Frames keep coming (video or camera): fps and latency mean something."""
        return self.mode in (VIDEO, CAMERA)

    def start(self, mode: Optional[str], path: Optional[Path], description: str) -> None:
        self.mode, self.path, self.description = mode, path, description
        self.error = ""
        self.paused = False


@dataclass
class InspectionState:
    """Opened still images and their results (a FrameResult, or the plain message of why not)."""

    order: list[str] = field(default_factory=list)
    results: dict[str, Union[FrameResult, str]] = field(default_factory=dict)
    shown: Optional[str] = None
    whole_image: bool = False
    #: files whose analysis of the current batch has not come back yet
    pending: set[str] = field(default_factory=set)
    #: bumped by every new batch or re-run, so a late result of an earlier one is dropped, not mixed in
    generation: int = 0

    def start(self, paths: list[str]) -> int:
        self.generation += 1
        self.order = list(paths)
        self.results.clear()
        self.pending = set(self.order)
        self.shown = self.order[0] if self.order else None
        return self.generation

    def rerun(self) -> int:
        """Analyse the same files again; their current results stay shown until replaced."""
        self.generation += 1
        self.pending = set(self.order)
        return self.generation

    def record(self, generation: int, path: str, entry: Union[FrameResult, str]) -> bool:
        """Keep ``entry`` if it belongs to the current batch; False for a stale one."""
        if generation != self.generation or path not in self.order:
            return False
        self.results[path] = entry
        self.pending.discard(path)
        return True

    @property
    def finished(self) -> bool:
        return bool(self.order) and not self.pending


class LiveStats:
    """Frame rate and per-stage times of the live source (reset with each new source)."""

    def __init__(self, frames: int = 60, samples: int = 30) -> None:
        self.frame_times: deque[float] = deque(maxlen=frames)
        self.timings: dict[str, deque[float]] = {}
        self.samples = samples

    def reset(self) -> None:
        self.frame_times.clear()
        self.timings.clear()

    def add(self, result: FrameResult, draw_ms: float, now: float) -> None:
        self.frame_times.append(now)
        for k, v in result.timings_ms.items():
            self.timings.setdefault(k, deque(maxlen=self.samples)).append(v)
        self.timings.setdefault("draw", deque(maxlen=self.samples)).append(draw_ms)
        if result.captured_at:
            self.timings.setdefault("latency", deque(maxlen=self.samples)).append((now - result.captured_at) * 1e3)

    def fps(self) -> float:
        t = self.frame_times
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) >= 2 and t[-1] > t[0] else 0.0

    def stage_ms(self) -> dict[str, float]:
        return {k: float(np.mean(v)) for k, v in self.timings.items() if v}

    def latency_text(self, skipped: int) -> str:
        """Stage times and ``skipped N``: frames that went by while the analysis was busy with the one
        before (:attr:`app.workers.InferenceWorker.skipped`; not frames that were never due)."""
        ms = self.stage_ms()
        parts = [f"{k} {ms[k]:.1f}" for k in ("capture", "detect", "align", "infer", "identity", "draw") if k in ms]
        lat = f" | end-to-end {ms['latency']:.0f} ms" if "latency" in ms else ""
        return "ms: " + " · ".join(parts) + lat + f" | skipped {skipped}"


@dataclass
class AppState:
    """Everything the window shows, owned by the controllers."""

    enrolments: EnrolmentStore
    enrolment_dir: Path
    #: weights key the user picked (shipped name or checkpoint path) and the ticked comparison models
    model: Optional[str] = None
    #: why ``model`` is selected, in words the window shows ("chosen", "fast default for this 2-core CPU")
    model_reason: str = ""
    #: the user chose ``model`` (Model box, command line, a saved choice); the app's own default is not
    #: saved as a choice, so a later session on another machine gets that machine's default
    model_chosen: bool = False
    comparison: list[str] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    loaded: LoadedModels = field(default_factory=LoadedModels)
    source: SourceState = field(default_factory=SourceState)
    inspection: InspectionState = field(default_factory=InspectionState)
    last_result: Optional[FrameResult] = None
    selected_id: Optional[int] = None
    explain_interval: float = 0.3
    live: LiveSettings = field(default_factory=LiveSettings)
    stats: LiveStats = field(default_factory=LiveStats)

    def choose_model(self, key: Optional[str], reason: str, chosen: bool) -> None:
        """``key`` becomes the selected model, ``reason`` says why, ``chosen`` when the user chose it."""
        self.model, self.model_reason, self.model_chosen = key, reason, chosen

    def show(self, result: FrameResult) -> None:
        """``result`` becomes the shown frame; a selection whose face left the frame is dropped."""
        self.last_result = result
        if self.selected_id is not None and all(f.track_id != self.selected_id for f in result.faces):
            self.selected_id = None

    def rematch_identities(self) -> int:
        """Every result the window can show again (inspected images, the shown frame) re-matched against
        the enrolments as they are now; returns how many faces were (see :func:`app.core.identity.rematch`)."""
        results = [r for r in self.inspection.results.values() if isinstance(r, FrameResult)]
        if self.last_result is not None and all(r is not self.last_result for r in results):
            results.append(self.last_result)
        return sum(rematch(r.faces, self.enrolments, r.identity) for r in results)

    def selected_face(self) -> Optional[TrackedFace]:
        """The selected track's face, else the largest face of the shown frame (None without faces)."""
        return pick_face(self.last_result, self.selected_id)
