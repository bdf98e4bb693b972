"""The training dialog runs real ``ferkit train`` jobs (QProcess) on a tiny FER+ fixture tree."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from tests.fixtures.app import dialog  # noqa: E402,F401
from tests.fixtures.datasets import make_ferplus_tree  # noqa: E402

RECIPE = "tfe-jl/resnet18-ferplus"
VOTES = [[10, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 8, 2, 0, 0, 0, 0, 0, 0, 0], [0, 0, 9, 0, 0, 0, 1, 0, 0, 0],
         [0, 0, 0, 7, 3, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 6, 4, 0], [0, 0, 0, 0, 8, 0, 0, 0, 0, 2]]


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FERKIT_APP_CONFIG", str(tmp_path / "config"))


@pytest.fixture()
def ferplus(tmp_path: Path) -> Path:
    from ferkit.recipes.registry import list_recipes

    if RECIPE not in list_recipes():
        pytest.skip(f"recipe {RECIPE} is not registered yet")
    root = tmp_path / "ferplus"
    make_ferplus_tree(root / "FER2013Train", votes=VOTES * 3)
    make_ferplus_tree(root / "FER2013Valid", votes=VOTES, start=1000)
    return root



def fill(dlg, data: Path, out: Path, epochs: int, extra: str = "--batch-size 6") -> None:
    dlg.recipe.setCurrentText(RECIPE)
    dlg.data.setText(str(data))
    dlg.out.setText(str(out))
    dlg.epochs.setValue(epochs)
    dlg.extra.setText(extra)


def test_wrong_folder_is_refused_with_a_plain_message(dialog, ferplus: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    fill(dialog, tmp_path / "empty", tmp_path / "run", 1)
    assert dialog.start_job() is None
    assert "does not fit the recipe" in dialog.message.text() and dialog.manager.jobs == []
    fill(dialog, tmp_path / "missing", tmp_path / "run", 1)
    assert dialog.start_job() is None and "does not exist" in dialog.message.text()


@pytest.mark.slow
def test_tiny_job_runs_to_completion_and_its_checkpoint_becomes_selectable(qtbot, dialog, ferplus: Path,
                                                                            tmp_path: Path) -> None:
    from app.main_window import MainWindow

    w = MainWindow(device="cpu")
    qtbot.addWidget(w)
    try:
        _run_to_completion(qtbot, w, dialog, ferplus, tmp_path)
    finally:
        w.shutdown()


def wait_for(qtbot, condition, timeout_ms: int, job) -> None:
    try:
        qtbot.waitUntil(condition, timeout=timeout_ms)
    except Exception:
        pytest.fail("timed out; job log:\n" + "\n".join(job.state.log[-20:]))


def _run_to_completion(qtbot, w, dialog, ferplus: Path, tmp_path: Path) -> None:
    from PySide6.QtWidgets import QApplication

    w.jobs = dialog.manager
    dialog.manager.checkpoint_ready.connect(w.add_checkpoint)
    fill(dialog, ferplus, tmp_path / "run", 2)
    index = dialog.start_job()
    assert index == 0
    job = dialog.manager.jobs[0]
    wait_for(qtbot, lambda: job.state.status in ("completed", "failed", "interrupted") and
             job.process.state() == job.process.ProcessState.NotRunning, 300000, job)
    assert job.state.status == "completed", "\n".join(job.state.log[-15:])
    assert job.state.epoch == 2 and job.state.fraction == 1.0
    assert len(job.state.epoch_curve) == 2
    ckpt = (tmp_path / "run" / "checkpoint.pt").resolve()
    assert ckpt.exists()
    QApplication.processEvents()
    keys = [w.model_combo.itemData(i) for i in range(w.model_combo.count())]
    assert str(ckpt) in keys
    w._select_model(str(ckpt))
    qtbot.waitUntil(lambda: w.handles.get("primary") is not None and w.handles["primary"].key == str(ckpt),
                    timeout=60000)
    # the dialog's views followed the job
    dialog._show_job(force=True)
    assert dialog.progress.value() == 1000 and "completed" in dialog.status.text()


@pytest.mark.slow
def test_cancel_keeps_the_checkpoint_and_resume_continues(qtbot, dialog, ferplus: Path, tmp_path: Path) -> None:
    fill(dialog, ferplus, tmp_path / "run", 500)
    dialog.start_job()
    job = dialog.manager.jobs[0]
    wait_for(qtbot, lambda: len(job.state.epoch_curve) >= 1, 300000, job)
    dialog.manager.cancel(0)
    qtbot.waitUntil(lambda: job.state.status in ("interrupted", "completed", "failed"), timeout=120000)
    assert job.state.status == "interrupted", "\n".join(job.state.log[-15:])
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    done = job.state.epoch
    assert 1 <= done < 500
    # resume: the same job (one queue entry, its curves kept) starts again after the saved epoch
    points = len(job.state.step_curve)
    assert dialog.manager.resume(0) == 0 and len(dialog.manager.jobs) == 1
    job2 = dialog.manager.jobs[0]
    wait_for(qtbot, lambda: job2.state.status == "running" and len(job2.state.step_curve) > points, 180000, job2)
    assert any("resuming" in line for line in job2.state.log)
    dialog.manager.cancel(0)
    qtbot.waitUntil(lambda: job2.state.status != "stopping" and job2.state.status != "running", timeout=120000)
