"""Training jobs in the background: ``ferkit train`` as a QProcess, one after another.

The manager belongs to the main window, not to the dialog, so jobs keep running when the dialog
is closed. Progress is the engine's JSON-lines stream on stdout (parsed by
:class:`app.core.jobs.JobState`); stderr (the human progress bar and log) goes to the log view.
Cancel sends SIGTERM (``QProcess.terminate``): the engine finishes the current step, saves
``checkpoint.pt`` and exits, so a cancelled job can be resumed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, QTimer, Signal

from app.core.jobs import JobState, cli_command, train_args

log = logging.getLogger("ferkit.app")


@dataclass
class Job:
    recipe: str
    data: Path
    out: Path
    epochs: Optional[int]
    device: str
    resume: bool = False
    extra: list[str] = field(default_factory=list)
    state: JobState = None  # type: ignore[assignment]
    process: Optional[QProcess] = None
    _stdout_buf: str = ""

    def __post_init__(self) -> None:
        if self.state is None:
            self.state = JobState(self.recipe, Path(self.out))

    @property
    def title(self) -> str:
        return f"{self.recipe} → {self.out}" + (" (resume)" if self.resume else "")


class JobManager(QObject):
    """Runs queued training jobs one at a time; emits updates for the dialog and the model selector."""

    job_added = Signal(int)
    job_updated = Signal(int)
    checkpoint_ready = Signal(str)  # a finished (or cancelled) job's checkpoint path

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.jobs: list[Job] = []
        #: stop grace period before a hard kill (the engine saves within one step)
        self.kill_after_ms = 60000

    # ---- queue -----------------------------------------------------------------------------
    def add(self, job: Job) -> int:
        self.jobs.append(job)
        index = len(self.jobs) - 1
        self.job_added.emit(index)
        self._start_next()
        return index

    def running(self) -> list[int]:
        return [i for i, j in enumerate(self.jobs) if j.process is not None
                and j.process.state() != QProcess.ProcessState.NotRunning]

    def _start_next(self) -> None:
        if self.running():
            return
        for i, job in enumerate(self.jobs):
            if job.state.status == "queued":
                self._start(i)
                return

    def _start(self, index: int) -> None:
        job = self.jobs[index]
        program, args = cli_command(train_args(job.recipe, job.data, job.out, job.epochs, job.device, job.resume,
                                               job.extra))
        proc = QProcess(self)
        env = QProcessEnvironment.systemEnvironment()
        env.insert("PYTHONUNBUFFERED", "1")
        proc.setProcessEnvironment(env)
        proc.setProgram(program)
        proc.setArguments(args)
        proc.readyReadStandardOutput.connect(lambda i=index: self._read_stdout(i))
        proc.readyReadStandardError.connect(lambda i=index: self._read_stderr(i))
        proc.finished.connect(lambda code, _status, i=index: self._finished(i, code))
        proc.errorOccurred.connect(lambda err, i=index: self._error(i, err))
        job.process = proc
        job.state.status = "running"
        job.state.log.append("$ " + " ".join([Path(program).name, *args]))
        log.info("training job %d: %s %s", index, program, args)
        proc.start()
        self.job_updated.emit(index)

    def _read_stdout(self, index: int) -> None:
        job = self.jobs[index]
        job._stdout_buf += bytes(job.process.readAllStandardOutput()).decode("utf-8", "replace")
        *lines, job._stdout_buf = job._stdout_buf.split("\n")
        for line in lines:
            job.state.feed(line)
        self.job_updated.emit(index)

    def _read_stderr(self, index: int) -> None:
        job = self.jobs[index]
        text = bytes(job.process.readAllStandardError()).decode("utf-8", "replace")
        for line in text.replace("\r", "\n").splitlines():
            line = line.replace("\x1b[K", "").strip()
            if line:
                job.state.log.append(line)
        self.job_updated.emit(index)

    def _error(self, index: int, err) -> None:
        job = self.jobs[index]
        if err == QProcess.ProcessError.FailedToStart:
            job.state.status = "failed"
            job.state.message = f"the training program could not be started ({job.process.errorString()})"
            job.state.log.append(job.state.message)
            self.job_updated.emit(index)
            self._start_next()

    def _finished(self, index: int, code: int) -> None:
        job = self.jobs[index]
        if job._stdout_buf:
            job.state.feed(job._stdout_buf)
            job._stdout_buf = ""
        st = job.state
        if st.status in ("running", "stopping"):
            if code == 0:
                st.status = "completed"
            elif code == 130 or st.status == "stopping":
                st.status = "interrupted"
            else:
                st.status = "failed"
                last = next((l for l in reversed(st.log) if "error" in l.lower()), "")
                st.message = last or f"the training process exited with status {code}"
        ckpt = Path(st.checkpoint) if st.checkpoint else Path(job.out) / "checkpoint.pt"
        if ckpt.exists():
            st.checkpoint = str(ckpt)
            self.checkpoint_ready.emit(str(ckpt))
        st.log.append(f"finished: {st.status}" + (f" — {st.message}" if st.message and st.status == "failed" else ""))
        self.job_updated.emit(index)
        self._start_next()

    # ---- control ---------------------------------------------------------------------------
    def cancel(self, index: int) -> None:
        """Queued: dropped. Running: asked to stop; the engine saves its checkpoint first."""
        job = self.jobs[index]
        if job.state.status == "queued":
            job.state.status = "interrupted"
            job.state.log.append("cancelled before it started")
            self.job_updated.emit(index)
            return
        if job.process is not None and job.process.state() != QProcess.ProcessState.NotRunning:
            job.state.status = "stopping"
            job.state.log.append("stopping: the checkpoint is saved after the current step…")
            job.process.terminate()
            proc = job.process
            QTimer.singleShot(self.kill_after_ms, lambda: proc.kill()
                              if proc.state() != QProcess.ProcessState.NotRunning else None)
            self.job_updated.emit(index)

    def resume(self, index: int) -> int:
        old = self.jobs[index]
        return self.add(Job(old.recipe, old.data, old.out, old.epochs, old.device, resume=True, extra=list(old.extra)))

    def stop_all(self, wait_ms: int = 60000) -> None:
        for i in self.running():
            self.cancel(i)
        for job in self.jobs:
            if job.process is not None and job.process.state() != QProcess.ProcessState.NotRunning:
                if not job.process.waitForFinished(wait_ms):
                    job.process.kill()
                    job.process.waitForFinished(3000)
