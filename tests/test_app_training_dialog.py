"""The training dialog without running a job: texts, output folder, buttons, engine numbers, layout.

Jobs are put into the manager's list directly and fed the engine's JSON events, so each check
runs in milliseconds; ``test_app_training.py`` runs real ``ferkit train`` processes. One test
here starts a stand-in process (a few lines of Python) to exercise the QProcess plumbing.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from tests.fixtures.app import dialog  # noqa: E402,F401

CK_RECIPE = "eifn/ckplus"
FER_RECIPE = "tfe-jl/resnet18-ferplus"


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FERKIT_APP_CONFIG", str(tmp_path / "config"))



def ev(kind: str, **fields) -> str:
    return json.dumps({"event": kind, "time": fields.pop("time", time.time()), **fields})


def add_job(dlg, out: Path, status: str = "queued"):
    """A job in the queue that no process backs (the dialog only reads its state)."""
    from app.training import Job

    job = Job(FER_RECIPE, Path("data"), out, 30, "cpu")
    job.state.status = status
    dlg.manager.jobs.append(job)
    dlg.manager.job_added.emit(len(dlg.manager.jobs) - 1)
    return job


def update(dlg, job) -> None:
    dlg.manager.job_updated.emit(dlg.manager.jobs.index(job))


# ---- 1. recipe texts are plain text ----------------------------------------------------------------
def test_recipe_help_shows_angle_brackets_literally(dialog) -> None:
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QTextDocument

    from ferkit.recipes.registry import get_recipe

    dialog.recipe.setCurrentText(CK_RECIPE)
    help_text = get_recipe(CK_RECIPE).data_help
    assert "<class>" in help_text
    doc = QTextDocument()
    doc.setHtml(dialog.recipe_help.text())
    shown = doc.toPlainText()
    assert help_text in shown, shown  # was "CK+48//S###..." with <class> eaten as a tag
    assert dialog.recipe_help.textFormat() == Qt.TextFormat.RichText  # the "Data:" emphasis stays


def test_validation_message_quoting_the_recipe_is_plain_text(dialog, tmp_path: Path) -> None:
    from PySide6.QtCore import Qt

    (tmp_path / "empty").mkdir()
    dialog.recipe.setCurrentText(CK_RECIPE)
    dialog.data.setText(str(tmp_path / "empty"))
    assert dialog.start_job() is None
    assert "<class>" in dialog.message.text()
    assert dialog.message.textFormat() == Qt.TextFormat.PlainText
    assert dialog.status.textFormat() == Qt.TextFormat.PlainText


# ---- 2. output folder --------------------------------------------------------------------------------
def test_output_folder_follows_the_recipe_until_the_user_sets_one(dialog, tmp_path: Path) -> None:
    from app.training_dialog import default_out_dir, runs_root

    dialog.recipe.setCurrentText(CK_RECIPE)
    first = Path(dialog.out.text())
    assert first == default_out_dir(CK_RECIPE) == runs_root() / "eifn-ckplus"
    assert Path.cwd() not in first.parents  # not wherever the app was started
    assert runs_root().parts[-2:] == ("ferkit", "runs")
    dialog.recipe.setCurrentText(FER_RECIPE)
    assert Path(dialog.out.text()) == runs_root() / "tfe-jl-resnet18-ferplus"  # was still .../eifn-ckplus
    assert dialog.out_is_automatic
    mine = str(tmp_path / "my-run")
    dialog.out.setText(mine)
    dialog.recipe.setCurrentText(CK_RECIPE)
    assert dialog.out.text() == mine and not dialog.out_is_automatic
    dialog.out.setText("")  # cleared: the recipe's default again
    dialog.recipe.setCurrentText(FER_RECIPE)
    assert Path(dialog.out.text()) == runs_root() / "tfe-jl-resnet18-ferplus"


# ---- 3. buttons ----------------------------------------------------------------------------------------
def test_cancel_and_resume_only_when_meaningful(dialog, tmp_path: Path) -> None:
    assert not dialog.cancel_button.isEnabled() and not dialog.resume_button.isEnabled()  # no job yet
    out = tmp_path / "run"
    job = add_job(dialog, out, "running")
    update(dialog, job)
    assert dialog.cancel_button.isEnabled() and not dialog.resume_button.isEnabled()
    job.state.status = "interrupted"
    update(dialog, job)
    assert not dialog.cancel_button.isEnabled()
    assert not dialog.resume_button.isEnabled()  # no checkpoint in the folder: nothing to resume
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"x")
    update(dialog, job)
    assert dialog.resume_button.isEnabled()
    other = add_job(dialog, out, "running")  # another job now writes to that folder
    dialog.job_list.setCurrentRow(0)
    assert not dialog.resume_button.isEnabled()
    other.state.status = "completed"
    update(dialog, other)
    assert dialog.job_list.currentRow() == 0 and dialog.resume_button.isEnabled()


# ---- 4. the engine's own numbers ---------------------------------------------------------------------
def test_status_shows_the_engines_step_count_and_eta(dialog, tmp_path: Path) -> None:
    job = add_job(dialog, tmp_path / "run")
    st = job.state
    now = time.time()
    st.feed(ev("start", recipe=FER_RECIPE, device="cpu", epochs=30, start_epoch=0, steps=None, resumed=False))
    st.feed(ev("step", time=now, epoch=1, epochs=30, step=8, steps=10, global_step=8, loss=1.0, accuracy=0.5,
               images_per_s=50.0, eta_s=161.0))
    update(dialog, job)
    text = dialog.status.text()
    assert "step 8/10" in text and "ETA 02:41" in text, text
    # counted down from the event's time while no event comes (evaluation)
    assert st.eta_now(now + 60) == pytest.approx(101.0)
    assert st.eta_now(now + 1000) == 0.0


def test_validation_points_sit_at_the_epochs_global_step(dialog, tmp_path: Path) -> None:
    job = add_job(dialog, tmp_path / "run")
    st = job.state
    st.feed(ev("start", recipe=FER_RECIPE, device="cpu", epochs=3, start_epoch=0, steps=27, resumed=False))
    for epoch in (1, 2):
        for step in (1, 10):
            st.feed(ev("step", epoch=epoch, epochs=3, step=step, steps=27, global_step=(epoch - 1) * 10 + step,
                       loss=1.0, accuracy=0.5, eta_s=10.0))
        st.feed(ev("epoch", epoch=epoch, epochs=3, global_step=epoch * 10, loss=1.0, accuracy=0.5,
                   val={"val_accuracy": 0.3 * epoch}, eta_s=5.0, checkpoint=str(tmp_path / "run/checkpoint.pt")))
    assert st.val_curve == [(10.0, 0.3), (20.0, 0.6)]  # not epoch x 27
    dialog.curves.plot(st, force=True)
    val_line = next(line for line in dialog.curves.ax_acc.lines if line.get_label() == "validation")
    assert list(val_line.get_xdata()) == [10.0, 20.0]
    train_line = next(line for line in dialog.curves.ax_acc.lines if line.get_label() == "train (running)")
    assert max(train_line.get_xdata()) == 20.0  # same axis: the last step of epoch 2 is at the last point


# ---- 5. log and layout -------------------------------------------------------------------------------
def test_each_event_reaches_the_log_once(dialog, tmp_path: Path, qtbot, monkeypatch) -> None:
    """A stand-in for ``ferkit train``: JSON events on stdout, the engine's human lines on stderr
    (one of them split over two writes). "stopped by SIGTERM ..." used to appear twice."""
    import app.training as training

    end = {"event": "end", "time": 0, "status": "interrupted", "epoch": 1, "epochs": 3,
           "message": "stopped by SIGTERM after 1/3 completed epochs; checkpoint saved"}
    epoch = {"event": "epoch", "time": 0, "epoch": 1, "epochs": 3, "global_step": 10, "loss": 1.0,
             "accuracy": 0.5, "val": {"val_accuracy": 0.5}, "eta_s": 1.0}
    script = "\n".join([
        "import json, sys, time",
        f"print(json.dumps({epoch!r}), flush=True)",
        "sys.stderr.write('epoch 1/3: loss 1.0000 acc 0.5000\\n'); sys.stderr.flush()",
        "sys.stderr.write('SIGTERM: finishing this step'); sys.stderr.flush(); time.sleep(0.3)",
        "sys.stderr.write(' and saving a checkpoint\\n'); sys.stderr.flush()",
        f"print(json.dumps({end!r}), flush=True)",
        f"sys.stderr.write({end['message']!r} + '\\n'); sys.stderr.flush()",
        "sys.exit(130)",
    ])
    monkeypatch.setattr(training, "cli_command", lambda args: (sys.executable, ["-c", script]))
    job = training.Job(FER_RECIPE, tmp_path, tmp_path / "run", 3, "cpu")
    dialog.manager.add(job)
    qtbot.waitUntil(lambda: any(line.startswith("finished:") for line in job.state.log), timeout=30000)
    log = job.state.log[1:]  # [0] is the command line (here the stand-in's source)
    assert sum("stopped by SIGTERM" in line for line in log) == 1, log
    assert sum(line.startswith("epoch 1/3") for line in log) == 1, log
    assert "SIGTERM: finishing this step and saving a checkpoint" in log, log  # one line, not two halves
    assert job.state.status == "interrupted" and job.state.val_curve == [(10.0, 0.5)]


def test_buttons_do_not_move_when_the_checkpoint_line_appears(dialog, tmp_path: Path, qtbot) -> None:
    from PySide6.QtWidgets import QApplication

    dialog.show()
    qtbot.waitExposed(dialog)
    job = add_job(dialog, tmp_path / "run")
    st = job.state
    st.feed(ev("start", recipe=FER_RECIPE, device="cpu", epochs=3, start_epoch=0, steps=None, resumed=False))
    st.feed(ev("step", epoch=1, epochs=3, step=1, steps=10, global_step=1, eta_s=100.0))
    update(dialog, job)
    QApplication.processEvents()
    before = dialog.cancel_button.mapTo(dialog, dialog.cancel_button.rect().topLeft())
    width = dialog.width()
    long_path = tmp_path / ("very-long-folder-name-" * 12) / "checkpoint.pt"
    st.feed(ev("epoch", epoch=1, epochs=3, global_step=10, val={"val_accuracy": 0.5}, eta_s=50.0,
               checkpoint=str(long_path)))
    st.feed(ev("step", epoch=2, epochs=3, step=1, steps=10, global_step=11, eta_s=45.0))
    update(dialog, job)
    QApplication.processEvents()
    assert "checkpoint:" in dialog.status.text()
    after = dialog.cancel_button.mapTo(dialog, dialog.cancel_button.rect().topLeft())
    assert after == before and dialog.width() == width
    assert str(long_path) in dialog.status.toolTip()  # the full path stays readable


# ---- 6. threads, devices, dataset folder, one job across resumes (issue 22) ---------------------------
def stand_in(monkeypatch, lines: list[dict], code: int = 0, seen: list | None = None) -> None:
    """``ferkit train`` replaced by a script printing ``lines`` as JSON events, then exiting ``code``."""
    import app.training as training

    script = "\n".join(["import json, sys", *(f"print(json.dumps({e!r}), flush=True)" for e in lines),
                        f"sys.exit({code})"])

    def command(args):
        if seen is not None:
            seen.append(list(args))
        return sys.executable, ["-c", script]

    monkeypatch.setattr(training, "cli_command", command)


def test_device_list_says_which_device_runs_and_why(qtbot, monkeypatch) -> None:
    import torch

    from app.training import JobManager
    from app.training_dialog import TrainingDialog

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    dlg = TrainingDialog(JobManager(), ["auto", "cpu"])
    qtbot.addWidget(dlg)
    assert dlg.device.itemText(0) == "auto → cpu (no CUDA GPU found)" and dlg.device.itemData(0) == "auto"
    assert dlg.device.itemText(1) == "cpu" and dlg.device_value == "auto"  # --device gets the value, not the text


def test_threads_are_settable_and_shown(dialog, tmp_path: Path, monkeypatch) -> None:
    assert dialog.threads.value() == 0 and dialog.threads.text() == "auto" and dialog.threads_value == "auto"
    assert "core" in dialog.threads_note.text()
    time.sleep(0.1)  # /proc/stat counts in 10 ms ticks: a look needs some time behind it
    dialog._measure_cores()
    if dialog._probe._last is not None:  # Linux: a measurement now stands behind the note
        assert "free now →" in dialog.threads_note.text(), dialog.threads_note.text()
    dialog.threads.setValue(1)
    assert dialog.threads_value == "1" and "fixed" in dialog.threads_note.text()
    from app.core.jobs import train_args

    args = train_args("r", Path("d"), Path("o"), 2, "cpu", False, ["--threads", "3"], threads="1")
    assert args.index("--threads") < args.index("3") and args[args.index("--threads") + 1] == "1"
    # the engine's count reaches the status line
    job = add_job(dialog, tmp_path / "run")
    job.state.feed(ev("start", recipe=FER_RECIPE, device="cpu", epochs=3, start_epoch=0, steps=10, resumed=False,
                      threads=2, threads_auto=True))
    job.state.feed(ev("step", epoch=1, epochs=3, step=2, steps=10, global_step=2, images_per_s=900.0, eta_s=9.0,
                      threads=1))
    update(dialog, job)
    assert "900 images/s on 1 thread (auto)" in dialog.status.text(), dialog.status.text()


def test_dataset_folder_is_prefilled(qtbot, tmp_path: Path, monkeypatch) -> None:
    from PySide6.QtCore import QSettings

    from app.training import JobManager
    from app.training_dialog import TrainingDialog

    shared = tmp_path / "shared"
    (shared / "ckplus48").mkdir(parents=True)
    (shared / "ferplus").mkdir()
    monkeypatch.setenv("FERKIT_SHARED_DATA", str(shared))
    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    dlg = TrainingDialog(JobManager(), ["cpu"], settings=settings)
    qtbot.addWidget(dlg)
    dlg.recipe.setCurrentText(CK_RECIPE)
    assert Path(dlg.data.text()) == shared / "ckplus48"  # the recipe's own example folder
    dlg.recipe.setCurrentText(FER_RECIPE)
    assert Path(dlg.data.text()) == shared / "ferplus"  # follows the recipe while not the user's choice
    mine = tmp_path / "my-ferplus"
    mine.mkdir()
    settings.setValue(f"training/data/{CK_RECIPE}", str(mine))  # as start_job leaves it
    dlg.recipe.setCurrentText(CK_RECIPE)
    assert Path(dlg.data.text()) == mine  # the last used folder wins
    typed = str(tmp_path / "typed")
    dlg.data.setText(typed)
    dlg.recipe.setCurrentText(FER_RECIPE)
    assert dlg.data.text() == typed  # what the user typed is never replaced


def test_start_remembers_the_dataset_folder(dialog, shared_data: Path, tmp_path: Path, monkeypatch) -> None:
    seen: list = []
    stand_in(monkeypatch, [], seen=seen)
    dialog.recipe.setCurrentText(CK_RECIPE)
    data = shared_data / "ckplus48"
    dialog.data.setText(str(data))
    dialog.out.setText(str(tmp_path / "run"))
    assert dialog.start_job() == 0
    assert dialog.settings.value(f"training/data/{CK_RECIPE}") == str(data)
    assert seen and "--threads" in seen[0] and seen[0][seen[0].index("--threads") + 1] == "auto"


def test_completed_job_cannot_be_resumed(dialog, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"x")
    job = add_job(dialog, out, "completed")
    update(dialog, job)
    assert not dialog.resume_button.isEnabled() and "nothing is left" in dialog.resume_button.toolTip()
    job.state.status = "interrupted"
    update(dialog, job)
    assert dialog.resume_button.isEnabled()


def test_resume_keeps_one_job_and_its_curves(dialog, tmp_path: Path, qtbot, monkeypatch) -> None:
    """Interrupted mid-epoch 2, resumed: one queue entry, epoch 1's curve kept, the re-run steps of
    epoch 2 replace the first attempt's, and Resume is off once it completed."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"x")
    job = add_job(dialog, out, "running")
    st = job.state
    st.feed(ev("start", recipe=FER_RECIPE, device="cpu", epochs=2, start_epoch=0, steps=10, resumed=False))
    for g in range(1, 11):
        st.feed(ev("step", epoch=1, epochs=2, step=g, steps=10, global_step=g, loss=2.0 - g / 10, accuracy=0.1))
    st.feed(ev("epoch", epoch=1, epochs=2, global_step=10, loss=1.2, accuracy=0.3, val={"val_accuracy": 0.4},
               checkpoint=str(out / "checkpoint.pt")))
    for g in (11, 12, 13):
        st.feed(ev("step", epoch=2, epochs=2, step=g - 10, steps=10, global_step=g, loss=9.0, accuracy=0.0))
    st.status = "interrupted"
    update(dialog, job)
    seen: list = []
    stand_in(monkeypatch, [
        {"event": "start", "time": 0, "recipe": FER_RECIPE, "device": "cpu", "epochs": 2, "start_epoch": 1,
         "steps": None, "resumed": True, "threads": 1, "threads_auto": True},
        {"event": "step", "time": 0, "epoch": 2, "epochs": 2, "step": 1, "steps": 10, "global_step": 11,
         "loss": 1.0, "accuracy": 0.5},
        {"event": "epoch", "time": 0, "epoch": 2, "epochs": 2, "global_step": 20, "loss": 1.0, "accuracy": 0.5,
         "val": {"val_accuracy": 0.6}, "checkpoint": str(out / "checkpoint.pt")},
        {"event": "end", "time": 0, "status": "completed", "epoch": 2, "epochs": 2, "message": "finished"},
    ], seen=seen)
    assert dialog.resume_button.isEnabled()
    dialog.resume_button.click()
    qtbot.waitUntil(lambda: job.state.status == "completed", timeout=30000)
    assert len(dialog.manager.jobs) == 1 and dialog.job_list.count() == 1
    assert "--resume" in seen[0] and "(resumed)" in dialog.job_list.item(0).text()
    xs = [x for x, _, _ in st.step_curve]
    assert xs == sorted(xs) and xs[:10] == [float(g) for g in range(1, 11)] and xs[-1] == 11.0
    assert all(loss != 9.0 for _, loss, _ in st.step_curve)  # the abandoned attempt is gone
    assert st.val_curve == [(10.0, 0.4), (20.0, 0.6)]
    assert not dialog.resume_button.isEnabled()


def test_resuming_a_run_from_an_earlier_session_reads_curves_csv(dialog, tmp_path: Path, qtbot,
                                                                  monkeypatch) -> None:
    from app.training import Job

    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"x")
    (out / "curves.csv").write_text("epoch,train_loss,train_accuracy,val_accuracy,lr\n"
                                    "1,1.5,0.3,0.35,0.1\n2,1.1,0.5,0.55,0.1\n", encoding="utf-8")
    stand_in(monkeypatch, [{"event": "start", "time": 0, "recipe": FER_RECIPE, "device": "cpu", "epochs": 5,
                            "start_epoch": 2, "steps": None, "resumed": True}], code=130)
    job = Job(FER_RECIPE, tmp_path, out, 5, "cpu", resume=True)
    dialog.manager.add(job)
    qtbot.waitUntil(lambda: job.state.status == "interrupted", timeout=30000)
    assert job.state.history == [(1, 1.5, 0.3, 0.35), (2, 1.1, 0.5, 0.55)]
    dialog.curves.plot(job.state, force=True)
    labels = [line.get_label() for line in dialog.curves.ax_acc.lines]
    assert "earlier epochs (curves.csv)" in labels and "earlier validation" in labels


def test_a_resume_before_the_kill_timer_fires_does_not_touch_the_deleted_process(qtbot, tmp_path: Path) -> None:
    """cancel -> the process ends at once -> resume deletes it -> the cancel's kill timer must not call into it.

    (The old timer fired a minute later into whichever test ran then: "Internal C++ object
    (PySide6.QtCore.QProcess) already deleted".)"""
    from PySide6.QtCore import QProcess

    from app.training import Job, JobManager

    manager = JobManager()
    manager.kill_after_ms = 200
    job = Job("tfe-jl/resnet12-ckplus", tmp_path, tmp_path / "run", 1, "cpu")
    job.state.status = "running"
    manager.jobs.append(job)
    proc = QProcess(manager)
    proc.start("sleep", ["30"])
    assert proc.waitForStarted(5000)
    job.process = proc
    manager.cancel(0)  # SIGTERM: sleep ends at once; the kill timer is armed
    assert proc.waitForFinished(5000)
    job.state.status = "interrupted"
    job.process.deleteLater()  # what resume() does with the finished process
    job.process = None
    qtbot.wait(500)  # past kill_after_ms: pytest-qt fails the test on an exception in the event loop
