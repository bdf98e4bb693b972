"""The app's saved choices (model, comparison, checkpoints, live settings, enrolments folder, source).

Read into and written from the state model (:mod:`app.core.state`), so no widget has to be
asked what the user chose. Stored in an ini file in the config folder (``FERKIT_APP_CONFIG``
points tests elsewhere).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from PySide6.QtCore import QSettings

from ferkit.face.tracking import Smoother

from app.core.models import CHECKPOINT_SUFFIXES, default_choice
from app.core.sources import sample_video
from app.core.state import CAMERA, AppState
from app.errors import config_dir


def app_settings() -> QSettings:
    return QSettings(str(config_dir() / "settings.ini"), QSettings.Format.IniFormat)


def _list(value: Any) -> list[str]:
    """ini files return a one-item list as a plain str, and an empty one as None."""
    if not value:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def enrolment_dir(s: QSettings) -> Path:
    return Path(str(s.value("enrolments_path", str(config_dir() / "enrolments"))))


def read_into(state: AppState, s: QSettings, devices: list[str], device: Optional[str] = None,
              weights: Optional[str] = None) -> None:
    """Saved choices into ``state``; ``device`` / ``weights`` (command line) win over saved ones, and a
    saved model over the machine's default (:func:`app.core.models.default_choice`)."""
    state.checkpoints = [c for c in _list(s.value("checkpoints")) if Path(c).exists()]
    saved = str(s.value("model") or "")
    if weights or saved:
        want, reason = (weights, "chosen with --weights") if weights else (saved, "chosen")
    else:
        default = default_choice()
        want, reason = default.key, default.reason
    if want and str(want).endswith(CHECKPOINT_SUFFIXES) and Path(str(want)).exists():
        path = str(Path(str(want)).resolve())
        state.checkpoints += [] if path in state.checkpoints else [path]
        want = path
    state.choose_model(str(want) if want else None, reason, chosen=bool(weights or saved))
    state.comparison = [c for c in _list(s.value("comparison")) if c != state.model]
    dev = device or str(s.value("device", "auto"))
    state.live.device = dev if dev in devices else "auto"
    state.live.max_faces = int(s.value("max_faces", 5))
    state.live.detector = str(s.value("detector", "near"))
    state.live.smoother = Smoother(str(s.value("smoothing/mode", "ema")), float(s.value("smoothing/alpha", 0.35)),
                                   int(s.value("smoothing/window", 8)))
    state.explain_interval = float(s.value("explain_interval", 0.3))
    state.source.loop = str(s.value("loop", "true")).lower() == "true"


def last_source(s: QSettings) -> str:
    return str(s.value("source", "") or "")


def write_from(state: AppState, s: QSettings) -> None:
    s.setValue("model", (state.model or "") if state.model_chosen else "")  # the default is no choice
    s.setValue("comparison", list(state.comparison))
    s.setValue("checkpoints", list(state.checkpoints))
    sm = state.live.smoother
    s.setValue("smoothing/mode", sm.mode)
    s.setValue("smoothing/alpha", sm.alpha)
    s.setValue("smoothing/window", sm.window)
    s.setValue("max_faces", state.live.max_faces)
    s.setValue("detector", state.live.detector)
    s.setValue("device", state.live.device)
    s.setValue("explain_interval", state.explain_interval)
    s.setValue("loop", state.source.loop)
    s.setValue("enrolments_path", str(state.enrolment_dir))
    src = state.source
    path = "camera" if src.mode == CAMERA else str(src.path or "")
    if src.path is not None and src.path.name == sample_video().name:
        path = ""  # the fallback sample is not a choice worth restoring
    s.setValue("source", path)
    s.sync()
