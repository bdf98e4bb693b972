"""Errors in plain words: a message a user can act on, the traceback only in the log file.

``install_excepthook`` replaces ``sys.excepthook`` (and ``threading.excepthook``) so an
unexpected error shows a dialog saying what happened and where the log is, instead of a
traceback in a terminal the user may not have, or a silent crash.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import traceback
from pathlib import Path
from typing import Optional

log = logging.getLogger("ferkit.app")

_log_file: Optional[Path] = None


def config_dir() -> Path:
    """The user's config folder for the app (``$FERKIT_APP_CONFIG`` overrides, e.g. in tests)."""
    env = os.environ.get("FERKIT_APP_CONFIG")
    if env:
        return Path(env)
    try:
        from PySide6.QtCore import QStandardPaths

        loc = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppConfigLocation)
        if loc:
            return Path(loc)
    except Exception:  # pragma: no cover - Qt missing
        pass
    return Path.home() / ".config" / "ferkit-app"


def setup_logging() -> Path:
    """Log to ``<config>/ferkit-app.log`` (tracebacks go there, never to the user's face)."""
    global _log_file
    folder = config_dir()
    folder.mkdir(parents=True, exist_ok=True)
    _log_file = folder / "ferkit-app.log"
    handler = logging.FileHandler(_log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("ferkit.app")
    root.setLevel(logging.INFO)
    if not any(isinstance(h, logging.FileHandler) for h in root.handlers):
        root.addHandler(handler)
    return _log_file


def plain_message(exc: BaseException, what: str = "Something went wrong") -> str:
    """One sentence for the user: what failed and the library's own explanation of why."""
    detail = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    detail = str(detail).strip() or type(exc).__name__
    if isinstance(exc, MemoryError):
        detail = "the computer ran out of memory"
    elif isinstance(exc, (ImportError, ModuleNotFoundError)):
        detail = f"a part of the program is missing ({detail}); reinstall the app"
    return f"{what}: {detail}"


def _show_dialog(message: str) -> None:
    try:
        from PySide6.QtCore import QThread
        from PySide6.QtWidgets import QApplication, QMessageBox

        app = QApplication.instance()
        if app is None or QThread.currentThread() is not app.thread():
            return
        box = QMessageBox(QMessageBox.Icon.Critical, "ferkit — unexpected error", message,
                          QMessageBox.StandardButton.Ok, app.activeWindow())
        if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
            return  # no one to click it (tests, self-test): logged only
        box.exec()
    except Exception:  # pragma: no cover - the hook itself must never raise
        pass


def install_excepthook() -> None:
    def hook(exc_type, exc, tb) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            sys.__excepthook__(exc_type, exc, tb)
            return
        log.error("unexpected error:\n%s", "".join(traceback.format_exception(exc_type, exc, tb)))
        where = f"\n\nDetails were written to {_log_file}." if _log_file else ""
        _show_dialog(plain_message(exc, "An unexpected error happened") + where)

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        log.error("unexpected error in thread %s:\n%s", getattr(args.thread, "name", "?"),
                  "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)))

    sys.excepthook = hook
    threading.excepthook = thread_hook
