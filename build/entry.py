"""Entry point of the frozen (PyInstaller) build: ``ferkit-app``.

``ferkit-app ARGS``                 the desktop app (``app.main.main``), e.g. ``--selftest``
``ferkit-app --ferkit-cli ARGS...`` the ``ferkit`` command line instead of the window: the training
                                    dialog starts background jobs this way (``app.core.jobs``),
                                    because a frozen build has no separate Python to run ``-m ferkit.cli``
``ferkit-app --startup-probe``      seconds from process start to the first processed frame
                                    (``build/startup_probe.py``), printed as JSON
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path

import startup_probe  # first: its module clock is the earliest point Python code runs


def persistent_matplotlib_cache() -> None:
    """Keep matplotlib's font cache between launches of the frozen app.

    PyInstaller's runtime hook points ``MPLCONFIGDIR`` at a fresh temporary folder on every
    launch, so matplotlib (imported at start-up through mediapipe) would rescan every system font
    each time: cheap here, seconds on a desktop with thousands of fonts. A per-user cache folder
    avoids that; when it cannot be created the hook's temporary folder stays.
    """
    if not getattr(sys, "frozen", False):
        return
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = base / "ferkit" / "matplotlib"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return
    if os.access(folder, os.W_OK):
        os.environ["MPLCONFIGDIR"] = str(folder)


def run(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    multiprocessing.freeze_support()
    persistent_matplotlib_cache()
    if argv[:1] == ["--ferkit-cli"]:
        from ferkit.cli import main as cli_main

        return int(cli_main(argv[1:]) or 0)
    if argv[:1] == ["--startup-probe"]:
        return startup_probe.run()
    from app.main import main as app_main

    return int(app_main(argv) or 0)


if __name__ == "__main__":
    sys.exit(run())
