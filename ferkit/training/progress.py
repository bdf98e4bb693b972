"""Progress reporting: JSON lines for programs on stdout, a bar for people on stderr.

The app's training dialog runs ``ferkit train`` as a subprocess and parses stdout, one JSON object
per line, flushed at once; people watch stderr. Keeping the two apart means neither has to
filter the other. Only rank 0 reports (see :mod:`ferkit.training.engine` for the event schema).

Non-finite floats (a diverged loss) are written as ``null`` because ``NaN`` is not valid JSON.
"""
from __future__ import annotations

import json
import math
import sys
import time
from typing import IO, Any, Callable, Optional


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            return _clean(value.item())
        except (ValueError, RuntimeError):
            return str(value)
    return value


def format_duration(seconds: Optional[float]) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ProgressReporter:
    """Writes events (JSON on ``stdout``) and a human view of them (``stderr``).

    ``enabled=False`` (ranks other than 0) silences both. ``on_event`` receives every event dict as
    well (in-process callers and tests). The bar redraws in place only when ``stderr`` is a
    terminal; otherwise (logs, pipes) one plain line is written per epoch.
    """

    def __init__(self, enabled: bool = True, stdout: Optional[IO[str]] = None, stderr: Optional[IO[str]] = None,
                 on_event: Optional[Callable[[dict[str, Any]], None]] = None, json_lines: bool = True):
        self.enabled = enabled
        self.stdout = stdout if stdout is not None else sys.stdout
        self.stderr = stderr if stderr is not None else sys.stderr
        self.on_event = on_event
        self.json_lines = json_lines
        try:
            self.tty = bool(self.stderr.isatty())
        except (AttributeError, ValueError):
            self.tty = False
        self._bar_open = False
        self._last_bar = 0.0

    # ---- machine-readable ------------------------------------------------------------------
    def emit(self, event: dict[str, Any]) -> None:
        if not self.enabled:
            return
        event = _clean(event)
        if self.json_lines:
            self.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
            self.stdout.flush()
        if self.on_event is not None:
            self.on_event(event)
        self._human(event)

    # ---- human-readable ----------------------------------------------------------------------
    def log(self, message: str) -> None:
        if not self.enabled:
            return
        self._end_bar()
        self.stderr.write(message.rstrip("\n") + "\n")
        self.stderr.flush()

    def _end_bar(self) -> None:
        if self._bar_open:
            self.stderr.write("\n")
            self._bar_open = False

    def _human(self, e: dict[str, Any]) -> None:
        kind = e.get("event")
        if kind == "start":
            resumed = f", resuming after epoch {e['start_epoch']}" if e.get("start_epoch") else ""
            self.log(f"training {e.get('recipe')} on {e.get('device')} (world size {e.get('world_size')}), "
                     f"{e.get('epochs')} epochs{resumed} -> {e.get('out_dir')}")
        elif kind == "step" and self.tty:
            now = time.monotonic()
            if now - self._last_bar < 0.1 and e.get("step") != e.get("steps"):
                return
            self._last_bar = now
            steps, step = e.get("steps"), e.get("step") or 0
            width = 24
            frac = min(1.0, step / steps) if steps else 0.0
            bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
            line = (f"\repoch {e.get('epoch')}/{e.get('epochs')} [{bar}] {step}/{steps or '?'} "
                    f"loss {_fmt(e.get('loss'))} acc {_fmt(e.get('accuracy'))} "
                    f"{_fmt(e.get('images_per_s'), 0)} img/s eta {format_duration(e.get('eta_s'))}")
            self.stderr.write(line + "\033[K")
            self.stderr.flush()
            self._bar_open = True
        elif kind == "epoch":
            val = " ".join(f"{k} {_fmt(v)}" for k, v in (e.get("val") or {}).items())
            best = " *best*" if e.get("best") else ""
            self.log(f"epoch {e.get('epoch')}/{e.get('epochs')}: loss {_fmt(e.get('loss'))} "
                     f"acc {_fmt(e.get('accuracy'))} {val} lr {_fmt(e.get('lr'), 6)} "
                     f"{_fmt(e.get('images_per_s'), 0)} img/s ({format_duration(e.get('epoch_time_s'))}, "
                     f"eta {format_duration(e.get('eta_s'))}){best}")
        elif kind == "end":
            self.log(f"{e.get('message', 'done')}")
        # "error" events are for programs only: the CLI prints the one-line error itself


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)
