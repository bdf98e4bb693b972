"""The training path imports no GUI, no face detector and no ONNX runtime.

Why it matters: the GPU machine has torch but neither mediapipe nor PySide6, and a training job
should not pay their import time; the app's packaging also relies on the library never importing Qt.
"""
from __future__ import annotations

import subprocess
import sys

BLOCKED = ("mediapipe", "PySide6", "onnxruntime")

SCRIPT = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError("blocked import: " + name)
        return None
sys.meta_path.insert(0, Block())
import ferkit.training.engine, ferkit.recipes, ferkit.models, ferkit.data, ferkit.evaluation.forward
from ferkit.recipes.registry import list_recipes
assert len(list_recipes()) >= 10, list_recipes()
print("ok")
"""


def test_training_modules_import_without_gui_detector_or_onnx() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(blocked=set(BLOCKED))], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
