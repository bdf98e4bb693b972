"""Entry point of the frozen (PyInstaller) build.

``ferkit-app --ferkit-cli ARGS...`` runs the ``ferkit`` command line instead of the window: the
training dialog starts background jobs this way, because a frozen build has no separate Python.
"""
from __future__ import annotations

import multiprocessing
import sys


def run() -> int:
    multiprocessing.freeze_support()
    if len(sys.argv) > 1 and sys.argv[1] == "--ferkit-cli":
        from ferkit.cli import main as cli_main

        return cli_main(sys.argv[2:])
    from app.main import main as app_main

    return int(app_main() or 0)


if __name__ == "__main__":
    sys.exit(run())
