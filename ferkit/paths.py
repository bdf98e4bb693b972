"""Where ferkit finds its shipped resources, in a source checkout and in a frozen build.

Resolution order: ``$FERKIT_RESOURCES``; the PyInstaller bundle (``sys._MEIPASS/resources``);
the ``resources/`` folder beside the ``ferkit`` package (source checkout / editable install).
Nothing is ever fetched from the network.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path


def resources_dir() -> Path:
    env = os.environ.get("FERKIT_RESOURCES")
    if env:
        return Path(env)
    frozen_root = getattr(sys, "_MEIPASS", None)
    if frozen_root:
        return Path(frozen_root) / "resources"
    return Path(__file__).resolve().parent.parent / "resources"


def weights_dir() -> Path:
    return resources_dir() / "weights"


def samples_dir() -> Path:
    return resources_dir() / "samples"


def shared_data_dir() -> Path:
    """The project's prepared real data (``../shared/data`` beside the checkout), if present."""
    env = os.environ.get("FERKIT_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"
