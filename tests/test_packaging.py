"""Cheap checks of the PyInstaller build's policy (build/bundle.py) and frozen entry point.

PyInstaller itself never runs here (minutes); ``.ci/build-app`` builds the folder and runs the
frozen ``--selftest``. These tests catch, in seconds, the mistakes that would only show there:
a required file gone, a mediapipe graph whose model file is not collected, an exclusion pattern
or excluded module that hits something the app loads, and ``--ferkit-cli`` not reaching the CLI.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BUILD / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bundle = _load("bundle")


def test_real_tree_has_every_required_file():
    bundle.check_required(ROOT)  # raises SystemExit naming what is missing
    names = {p.name for p in bundle.required_files(ROOT)}
    from app.core.sources import SAMPLE_IMAGE, SAMPLE_VIDEO  # the names the self-test opens

    assert {SAMPLE_IMAGE, SAMPLE_VIDEO} <= names
    for card in (ROOT / "resources" / "weights").glob("*.json"):
        assert {card.name, card.stem + ".pt", card.stem + ".md"} <= names


def _fake_tree(root: Path) -> None:
    (root / "app" / "core").mkdir(parents=True)
    (root / "app" / "core" / "sources.py").write_text('SAMPLE_VIDEO = "v.mp4"\nSAMPLE_IMAGE = "i.jpg"\n')
    (root / "resources" / "samples").mkdir(parents=True)
    (root / "resources" / "weights").mkdir(parents=True)
    for rel in ("samples/v.mp4", "samples/i.jpg", "weights/m.json", "weights/m.pt", "weights/m.md"):
        (root / "resources" / rel).write_bytes(b"x")


def test_check_required_names_each_missing_file(tmp_path):
    _fake_tree(tmp_path)
    bundle.check_required(tmp_path)
    (tmp_path / "resources" / "weights" / "m.pt").unlink()
    (tmp_path / "resources" / "samples" / "v.mp4").unlink()
    with pytest.raises(SystemExit) as err:
        bundle.check_required(tmp_path)
    assert "m.pt" in str(err.value) and "v.mp4" in str(err.value) and "i.jpg" not in str(err.value)


def test_check_required_fails_without_any_weights(tmp_path):
    _fake_tree(tmp_path)
    for p in (tmp_path / "resources" / "weights").iterdir():
        p.unlink()
    with pytest.raises(SystemExit, match="weights"):
        bundle.check_required(tmp_path)


def test_resources_datas_keep_the_folder_layout(tmp_path):
    _fake_tree(tmp_path)
    (tmp_path / "resources" / "icons").mkdir()
    (tmp_path / "resources" / "icons" / "ferkit.svg").write_text("<svg/>")
    (tmp_path / "resources" / "weights" / "__pycache__").mkdir()
    (tmp_path / "resources" / "weights" / "__pycache__" / "x.pyc").write_bytes(b"")
    got = {(Path(src).name, dst) for src, dst in bundle.resources_datas(tmp_path)}
    assert ("ferkit.svg", "resources/icons") in got
    assert ("m.pt", "resources/weights") in got and ("v.mp4", "resources/samples") in got
    assert not any(name.endswith(".pyc") for name, _ in got)


def test_mediapipe_graphs_and_every_model_they_load_are_collected():
    """The face solutions' graphs are collected, and so is every model file of the face modules.

    The graphs' subgraphs are compiled into ``_framework_bindings``, which names the ``.tflite``
    files it opens at run time; a file named there but not collected would fail only frozen.
    """
    import mediapipe.python as mp_python
    from mediapipe.python.solutions import face_detection, face_mesh

    datas = bundle.mediapipe_datas()
    collected = {f"{dst}/{Path(src).name}" for src, dst in datas}
    graphs = {face_detection._SHORT_RANGE_GRAPH_FILE_PATH, face_detection._FULL_RANGE_GRAPH_FILE_PATH,
              face_mesh._BINARYPB_FILE_PATH}
    assert graphs <= collected
    bindings = next(Path(mp_python.__file__).parent.glob("_framework_bindings*.so"))
    named = set(re.findall(rb"mediapipe/modules/[\w/]+\.tflite", bindings.read_bytes()))
    face_models = {n.decode() for n in named if n.decode().split("/")[2] in bundle.MEDIAPIPE_MODULES}
    assert "mediapipe/modules/face_landmark/face_landmark_with_attention.tflite" in face_models
    assert face_models <= collected, f"models the face graphs load are not collected: {sorted(face_models - collected)}"
    # hands/pose models (tens of MB) stay out
    assert not any("/hand_landmark/" in c or "/pose_landmark/" in c for c in collected)


@pytest.mark.parametrize("dest", [
    "torch/lib/libtorch_cpu.so", "torch/bin/torch_shm_manager", "torch/lib/libc10.so", "torch/lib/libtorch_python.so", "torch/lib/libgomp.so.1",
    "PySide6/Qt/plugins/platforms/libqoffscreen.so", "PySide6/Qt/plugins/platforms/libqxcb.so",
    "PySide6/Qt/plugins/platforms/libqwayland.so", "PySide6/Qt/plugins/imageformats/libqsvg.so",
    "PySide6/Qt/plugins/imageformats/libqjpeg.so", "PySide6/Qt/plugins/iconengines/libqsvgicon.so",
    "PySide6/Qt/plugins/multimedia/libffmpegmediaplugin.so", "PySide6/Qt/lib/libQt6Multimedia.so.6",
    "matplotlib/mpl-data/matplotlibrc", "matplotlib/mpl-data/fonts/ttf/DejaVuSans.ttf",
    "mediapipe/modules/face_landmark/face_landmark_with_attention.tflite", "cv2/cv2.abi3.so",
    "resources/weights/tfe-jl.pt", "resources/samples/expressions_pexels_640x360.mp4",
])
def test_runtime_files_are_not_dropped(dest):
    assert not bundle.dropped(dest)


@pytest.mark.parametrize("dest", [
    "torch/include/ATen/ATen.h", "torch/test/test_api", "torch/bin/protoc", "torch/lib/libtorchbind_test.so",
    "PySide6/Qt/translations/qtbase_de.qm", "PySide6/Qt/qml/QtQuick/Controls/qmldir",
    "matplotlib/mpl-data/sample_data/grace_hopper.jpg", "PySide6/Qt/plugins/platformthemes/libqgtk3.so", "cv2/data/haarcascade_frontalface_default.xml",
])
def test_unused_files_are_dropped(dest):
    assert bundle.dropped(dest)


def test_filter_toc_keeps_order_and_typecodes():
    toc = [("torch/lib/libc10.so", "/x/libc10.so", "BINARY"), ("torch/include/a.h", "/x/a.h", "DATA"),
           ("resources/weights/a.pt", "/r/a.pt", "DATA")]
    assert bundle.filter_toc(toc) == [toc[0], toc[2]]


def _imported_modules(folder: Path) -> set[str]:
    """Every module named by an import statement anywhere in a package, lazy imports included."""
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_no_module_the_app_or_library_imports_is_excluded():
    excluded = set(bundle.EXCLUDED_MODULES)
    used = _imported_modules(ROOT / "ferkit") | _imported_modules(ROOT / "app")
    hits = sorted(m for m in used if m in excluded or any(m.startswith(e + ".") for e in excluded))
    assert not hits, f"the frozen build excludes modules the code imports: {hits} (edit build/bundle.py)"


def test_entry_routes_ferkit_cli_to_the_command_line(capsys):
    sys.path.insert(0, str(BUILD))
    try:
        entry = _load("entry")
        assert entry.run(["--ferkit-cli", "models", "--json"]) == 0
    finally:
        sys.path.remove(str(BUILD))
    listed = json.dumps(json.loads(capsys.readouterr().out))
    for card in (ROOT / "resources" / "weights").glob("*.json"):
        assert card.stem in listed


def test_startup_probe_clock_starts_at_process_start():
    """``process_age_s`` measures from the kernel's process start, not from the first import."""
    code = ("import sys, time; time.sleep(0.6); sys.path.insert(0, sys.argv[1]); "
            "import startup_probe; print(startup_probe.process_age_s())")
    out = subprocess.run([sys.executable, "-c", code, str(BUILD)], capture_output=True, text=True, check=True)
    age = float(out.stdout)
    assert 0.6 <= age < 30.0


def test_matplotlib_cache_is_persistent_only_when_frozen(monkeypatch, tmp_path):
    sys.path.insert(0, str(BUILD))
    try:
        entry = _load("entry")
    finally:
        sys.path.remove(str(BUILD))
    monkeypatch.setenv("MPLCONFIGDIR", "/tmp/pyinstaller-temp")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delattr(sys, "frozen", raising=False)
    entry.persistent_matplotlib_cache()
    assert os.environ["MPLCONFIGDIR"] == "/tmp/pyinstaller-temp"  # source runs untouched
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    entry.persistent_matplotlib_cache()
    assert os.environ["MPLCONFIGDIR"] == str(tmp_path / "ferkit" / "matplotlib")
    assert (tmp_path / "ferkit" / "matplotlib").is_dir()
