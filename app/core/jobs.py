"""What the training dialog knows about one ``ferkit train`` run, built from its JSON-lines events.

The event schema is the engine's (module docstring of :mod:`ferkit.training.engine`): ``start``,
``step``, ``epoch``, ``end``, ``error``. Parsing lives here, apart from QProcess, so it is tested
without running anything; stray non-JSON lines go to the log instead of breaking the stream.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


def cli_command(args: list[str]) -> tuple[str, list[str]]:
    """Program and arguments that run ``ferkit <args>``: this Python, or the frozen app itself."""
    if getattr(sys, "frozen", False):
        return sys.executable, ["--ferkit-cli", *args]
    return sys.executable, ["-m", "ferkit.cli", *args]


def train_args(recipe: str, data: Path, out: Path, epochs: Optional[int], device: str, resume: bool,
               extra: Optional[list[str]] = None, threads: Optional[str] = None) -> list[str]:
    """``ferkit train`` arguments; ``threads`` ("auto" or a count) before ``extra``, so options typed
    by hand still win."""
    args = ["train", recipe, "--data", str(data), "--out", str(out), "--device", device]
    if epochs:
        args += ["--epochs", str(int(epochs))]
    if resume:
        args.append("--resume")
    if threads:
        args += ["--threads", str(threads)]
    return args + list(extra or [])


@dataclass
class JobState:
    recipe: str
    out_dir: Path
    status: str = "queued"  # queued | running | stopping | completed | interrupted | failed
    epoch: int = 0
    epochs: Optional[int] = None
    step: int = 0
    steps: Optional[int] = None
    eta_s: Optional[float] = None
    images_per_s: Optional[float] = None
    message: str = ""
    checkpoint: Optional[str] = None
    #: running curves: (global_step, loss, accuracy) from step events
    step_curve: list[tuple[float, Optional[float], Optional[float]]] = field(default_factory=list)
    #: per-epoch: (epoch, loss, accuracy, val_accuracy)
    epoch_curve: list[tuple[int, Optional[float], Optional[float], Optional[float]]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        """Share of the run done, from completed epochs plus the current epoch's steps."""
        if not self.epochs:
            return 0.0
        if self.status == "completed":
            return 1.0
        within = (self.step / self.steps) if self.steps else 0.0
        done = self.epoch + within if self.status == "running" and self.step else self.epoch
        return max(0.0, min(1.0, done / self.epochs))

    def feed(self, line: str) -> Optional[dict[str, Any]]:
        """One stdout line; returns the event dict, or None for a plain line (kept in the log)."""
        line = line.strip()
        if not line:
            return None
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            self.log.append(line)
            return None
        if not isinstance(event, dict) or "event" not in event:
            self.log.append(line)
            return None
        kind = event["event"]
        if kind == "start":
            self.status = "running"
            self.epochs = event.get("epochs")
            self.epoch = int(event.get("start_epoch") or 0)
            self.steps = event.get("steps")
            self.log.append(f"started {event.get('recipe')} on {event.get('device')}, {self.epochs} epochs"
                            + (f", resuming after epoch {self.epoch}" if event.get("resumed") else ""))
        elif kind == "step":
            self.step = int(event.get("step") or 0)
            self.steps = event.get("steps") or self.steps
            self.epochs = event.get("epochs") or self.epochs
            self.epoch = max(0, int(event.get("epoch") or 1) - 1)
            self.eta_s = event.get("eta_s")
            self.images_per_s = event.get("images_per_s")
            self.step_curve.append((float(event.get("global_step") or len(self.step_curve)),
                                    event.get("loss"), event.get("accuracy")))
        elif kind == "epoch":
            self.epoch = int(event.get("epoch") or self.epoch)
            self.step = 0
            self.eta_s = event.get("eta_s")
            self.checkpoint = event.get("checkpoint") or self.checkpoint
            val = event.get("val") or {}
            self.epoch_curve.append((self.epoch, event.get("loss"), event.get("accuracy"), val.get("val_accuracy")))
            vals = " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in val.items())
            self.log.append(f"epoch {self.epoch}/{self.epochs}: loss {_f(event.get('loss'))} "
                            f"accuracy {_f(event.get('accuracy'))} {vals}")
        elif kind == "end":
            self.status = "completed" if event.get("status") == "completed" else "interrupted"
            self.epoch = int(event.get("epoch") or self.epoch)
            self.checkpoint = event.get("checkpoint") or self.checkpoint
            self.message = str(event.get("message") or "")
            self.eta_s = 0.0 if self.status == "completed" else None
            self.log.append(self.message or self.status)
        elif kind == "error":
            self.status = "failed"
            self.message = str(event.get("message") or "training failed")
            self.log.append(f"error: {self.message}")
        return event


def _f(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else "-"
