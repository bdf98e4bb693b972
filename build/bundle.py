"""What goes into the one-folder build, and what is left out: the policy behind ``ferkit-app.spec``.

Kept apart from the spec (which only PyInstaller can execute) so that ``tests/test_packaging.py``
can check it cheaply: that every file the frozen app needs at run time is present and collected,
and that no exclusion pattern hits something the app loads.

Why each exclusion is safe is written next to it; the build script proves it after every build by
running ``ferkit-app --selftest`` (every shipped model, the face pipeline, the main window) and
``ferkit-app --ferkit-cli models --json`` on the frozen folder.
"""
from __future__ import annotations

import ast
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Iterable, Sequence

#: mediapipe has no PyInstaller hook. ``ferkit.face.pipeline`` runs the solutions API's
#: FaceDetection (short- and full-range) and FaceMesh with ``refine_landmarks=True``: their graphs
#: (``*.binarypb``) and the models the compiled subgraphs in ``_framework_bindings`` name live in
#: ``modules/face_detection`` and ``modules/face_landmark``. Hands, pose, holistic, selfie
#: segmentation, objectron, iris and face-geometry data (~24 MB) are never loaded, so not shipped.
MEDIAPIPE_MODULES = ("face_detection", "face_landmark")

#: Python packages never imported at run time. jax/jaxlib: optional imports of mediapipe's model
#: maker/genai converter (330 MB). The rest are development tools PyInstaller would otherwise
#: follow from optional imports inside torch, matplotlib or mediapipe.
EXCLUDED_MODULES = [
    "jax", "jaxlib", "tensorflow", "tensorboard", "torch.utils.tensorboard", "IPython", "notebook", "jupyter_client",
    "pytest", "_pytest", "pytestqt", "tkinter", "_tkinter", "matplotlib.backends.backend_tkagg",
    "matplotlib.backends._backend_tk", "matplotlib.backends.backend_webagg", "PyInstaller",
    # scipy (~78 MB with its OpenBLAS): reached only through optional imports of networkx/sympy
    # (torch's compiler stack) and torch.testing; ferkit and the app never import it
    "scipy",
    # Qt modules the app never imports (it uses QtCore, QtGui, QtWidgets, QtMultimedia only)
    "PySide6.QtWebEngineCore", "PySide6.QtWebEngineWidgets", "PySide6.QtWebEngineQuick", "PySide6.QtWebChannel",
    "PySide6.QtWebView", "PySide6.Qt3DCore", "PySide6.Qt3DRender", "PySide6.Qt3DInput", "PySide6.Qt3DLogic",
    "PySide6.Qt3DAnimation", "PySide6.Qt3DExtras", "PySide6.QtQuick", "PySide6.QtQuick3D", "PySide6.QtQml",
    "PySide6.QtQuickWidgets", "PySide6.QtQuickControls2", "PySide6.QtQuickTest", "PySide6.QtCharts",
    "PySide6.QtDataVisualization", "PySide6.QtGraphs", "PySide6.QtGraphsWidgets", "PySide6.QtPdf",
    "PySide6.QtPdfWidgets", "PySide6.QtBluetooth", "PySide6.QtNfc", "PySide6.QtPositioning", "PySide6.QtLocation",
    "PySide6.QtSensors", "PySide6.QtSerialPort", "PySide6.QtSerialBus", "PySide6.QtTextToSpeech",
    "PySide6.QtRemoteObjects", "PySide6.QtScxml", "PySide6.QtStateMachine", "PySide6.QtSql", "PySide6.QtTest",
    "PySide6.QtDesigner", "PySide6.QtHelp", "PySide6.QtSpatialAudio", "PySide6.QtHttpServer",
    "PySide6.QtWebSockets", "PySide6.QtNetworkAuth", "PySide6.QtUiTools", "PySide6.QtXml", "PySide6.QtSvgWidgets",
    "PySide6.QtOpenGLWidgets", "PySide6.QtConcurrent", "PySide6.QtDBus", "PySide6.QtAxContainer",
    "PySide6.QtMultimediaWidgets", "PySide6.QtCanvasPainter",
]

#: Files PyInstaller's hooks collect that the frozen app never opens, as glob patterns on the
#: path inside the bundle (``fnmatch``: ``*`` also crosses ``/``).
DROP_PATTERNS = [
    # torch: C++ headers, CMake files, C++ test executables and protoc, test-only shared libraries
    # (torch/bin/torch_shm_manager stays: ``import torch`` checks that it exists; see KEEP_PATTERNS)
    "torch/include/*", "torch/share/*", "torch/test/*", "torch/bin/*",
    "torch/lib/libjitbackend_test.so", "torch/lib/libtorchbind_test.so", "torch/lib/libaoti_custom_ops.so",
    "torch/lib/libbackend_with_compiler.so",
    # Qt: the UI is English only; QML is not used (widgets app)
    "PySide6/Qt/translations/*", "PySide6/Qt/qml/*",
    # Qt platform/image plugins for screens and formats the app does not use (xcb, wayland,
    # offscreen, minimal stay; images are decoded by OpenCV, icons are SVG)
    "PySide6/Qt/plugins/platforms/libqvnc.so", "PySide6/Qt/plugins/platforms/libqlinuxfb.so",
    "PySide6/Qt/plugins/platforms/libqeglfs.so", "PySide6/Qt/plugins/egldeviceintegrations/*",
    "PySide6/Qt/plugins/imageformats/libqtiff.so", "PySide6/Qt/plugins/imageformats/libqwebp.so",
    "PySide6/Qt/plugins/imageformats/libqtga.so", "PySide6/Qt/plugins/imageformats/libqwbmp.so",
    "PySide6/Qt/plugins/imageformats/libqicns.so", "PySide6/Qt/plugins/imageformats/libqpdf.so",
    # GTK theme plugin: needs GTK 3, which the bundle does not carry (Qt falls back to Fusion)
    "PySide6/Qt/plugins/platformthemes/libqgtk3.so",
    # on-screen (virtual) keyboard input method and its libraries: a desktop app with a keyboard
    "PySide6/Qt/plugins/platforminputcontexts/libqtvirtualkeyboardplugin.so", "PySide6/Qt/lib/libQt6VirtualKeyboard*",
    "PySide6/Qt/plugins/designer/*", "PySide6/Qt/plugins/qmltooling/*", "PySide6/Qt/plugins/sqldrivers/*",
    # matplotlib: demo data; only the Agg canvas is used (colormaps, training curves)
    "matplotlib/mpl-data/sample_data/*",
    # OpenCV: Haar cascades (faces come from mediapipe) and the Qt5 fonts/platform plugins of
    # OpenCV's own highgui windows, which the Qt app never opens
    "cv2/data/*", "cv2/qt/*",
]


#: Exceptions to DROP_PATTERNS: files a dropped folder holds that are needed at run time.
KEEP_PATTERNS = [
    "torch/bin/torch_shm_manager",  # torch/__init__.py raises at import when it is missing
]


def dropped(dest: str, patterns: Sequence[str] = DROP_PATTERNS) -> bool:
    """Whether a bundle path (as PyInstaller's TOC names it) matches an exclusion pattern."""
    dest = dest.replace("\\", "/")
    if any(fnmatchcase(dest, p) for p in KEEP_PATTERNS):
        return False
    return any(fnmatchcase(dest, p) for p in patterns)


def filter_toc(toc: Iterable[tuple], patterns: Sequence[str] = DROP_PATTERNS) -> list[tuple]:
    """A PyInstaller TOC (``(dest, src, typecode)`` tuples) without the dropped entries."""
    return [entry for entry in toc if not dropped(entry[0], patterns)]


def _sources_constant(root: Path, name: str) -> str:
    """A string constant of ``app/core/sources.py`` read without importing the app (no Qt, torch)."""
    path = root / "app" / "core" / "sources.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                return node.value.value
    raise SystemExit(f"build: {path} no longer defines {name} = '...'; update build/bundle.py")


def required_files(root: Path) -> list[Path]:
    """Files without which the frozen app cannot pass ``--selftest``.

    The sample image and video the self-test (and the app's no-camera fallback) open, and for
    every shipped weights card its state dict and human model card.
    """
    res = root / "resources"
    files = [res / "samples" / _sources_constant(root, "SAMPLE_IMAGE"),
             res / "samples" / _sources_constant(root, "SAMPLE_VIDEO")]
    cards = sorted((res / "weights").glob("*.json"))
    if not cards:
        files.append(res / "weights" / "<name>.json")  # reported as missing: no shipped model at all
    for card in cards:
        files += [card, card.with_suffix(".pt"), card.with_suffix(".md")]
    return files


def check_required(root: Path) -> None:
    """Stop the build, naming every missing file, instead of shipping a folder that breaks later."""
    missing = [p for p in required_files(root) if not p.is_file()]
    if missing:
        lines = "\n  ".join(str(p) for p in missing)
        raise SystemExit(f"build: required files are missing:\n  {lines}\n"
                         "Restore them (shipped weights come from `ferkit export`, samples from git) and build again.")


def resources_datas(root: Path) -> list[tuple[str, str]]:
    """``(source file, bundle folder)`` pairs for everything under ``resources/`` but caches."""
    res = root / "resources"
    out = []
    for path in sorted(res.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and not path.name.startswith("."):
            out.append((str(path), str(Path("resources") / path.parent.relative_to(res))))
    return out


def mediapipe_datas() -> list[tuple[str, str]]:
    """mediapipe's graph and model files for the face solutions only (see MEDIAPIPE_MODULES)."""
    from PyInstaller.utils.hooks import collect_data_files

    includes = [f"modules/{m}/**" for m in MEDIAPIPE_MODULES]
    datas = collect_data_files("mediapipe", includes=includes, excludes=["**/*.pyc", "**/*.py"])
    needed = {"face_detection_short_range.tflite", "face_detection_full_range_sparse.tflite",
              "face_landmark_with_attention.tflite"}
    found = {Path(src).name for src, _ in datas}
    if not needed <= found:
        raise SystemExit(f"build: mediapipe is missing {sorted(needed - found)}: install mediapipe==0.10.21 "
                         "(0.10.30+ no longer ships the face solution models)")
    return datas
