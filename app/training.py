"""Training jobs in the background: ``ferkit train`` as a QProcess, one after another.

The manager belongs to the main window, not to the dialog, so jobs keep running when the dialog
is closed. Progress is the engine's JSON-lines stream on stdout (parsed by
:class:`TrainingJobState`, a :class:`app.core.jobs.JobState`); stderr (the engine's human
lines: one per event, warnings, errors) is the log view. Each event therefore reaches the log
once, from stderr, and the numbers shown (steps, ETA, validation positions) are the engine's own.
Cancel sends SIGTERM (``QProcess.terminate``): the engine finishes the current step, saves
``checkpoint.pt`` and exits, so a cancelled job can be resumed.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, QTimer, Signal

from app.core.jobs import JobState, cli_command, train_args

log = logging.getLogger("ferkit.app")

#: job statuses during which a process exists or is about to (no second job may use the folder)
ACTIVE = ("queued", "running", "stopping")


@dataclass
class TrainingJobState(JobState):
    """:class:`JobState` as the dialog needs it: one log line per event, engine positions and times.

    ``JobState.feed`` writes its own summary line for ``start``/``epoch``/``end``/``error``
    events, but the engine (and the CLI, for errors) prints the human version of each on stderr,
    which the log view shows too: every epoch and "stopped by SIGTERM ..." appeared twice. Here
    stderr is the one human log, so the summary lines of parsed events are dropped.
    """

    #: validation accuracy per epoch at the engine's ``global_step`` of that epoch's end, so it sits
    #: on the same x axis as the step curve (``epoch * steps`` was wrong for shortened epochs)
    val_curve: list[tuple[float, Optional[float]]] = field(default_factory=list)
    #: engine wall-clock time (``time`` of the event) at which ``eta_s`` was estimated
    eta_time: Optional[float] = None
    #: torch threads the engine trains with (CPU runs; None until it says, or on a GPU)
    threads: Optional[int] = None
    #: whether that count follows the free cores (``--threads auto``)
    threads_auto: bool = False
    #: epochs read from the run's ``curves.csv`` when a resumed job had no curves of its own (an earlier
    #: session ran them): (epoch, train loss, train accuracy, val accuracy)
    history: list[tuple[int, Optional[float], Optional[float], Optional[float]]] = field(default_factory=list)

    def feed(self, line: str) -> Optional[dict[str, Any]]:
        before = len(self.log)
        last_x = self.step_curve[-1][0] if self.step_curve else None
        event = super().feed(line)
        if event is None:
            return None
        del self.log[before:]  # the engine's own line for this event comes on stderr
        kind = event.get("event")
        if isinstance(event.get("threads"), int):
            self.threads = int(event["threads"])
        if kind == "start":
            self.threads_auto = bool(event.get("threads_auto"))
        if kind == "step" and last_x is not None and self.step_curve[-1][0] <= last_x:
            # a resume restarts the interrupted epoch from its first batch: the steps after the last
            # checkpoint are trained again, so their first run leaves the curve (no zig-zag back)
            x = self.step_curve[-1][0]
            self.step_curve[:] = [p for p in self.step_curve[:-1] if p[0] < x] + [self.step_curve[-1]]
        if kind in ("step", "epoch"):
            self.eta_time = event.get("time") if isinstance(event.get("time"), (int, float)) else None
        elif kind in ("end", "error"):
            self.eta_time = None
        if kind == "epoch":
            x = event.get("global_step")
            if not isinstance(x, (int, float)):  # an older engine: the last step seen is the best guess
                x = self.step_curve[-1][0] if self.step_curve else self.epoch * (self.steps or 1)
            self.val_curve.append((float(x), (event.get("val") or {}).get("val_accuracy")))
        return event

    def load_history(self, out_dir: Path) -> int:
        """Read ``out_dir/curves.csv`` (the engine's per-epoch rows) into :attr:`history`; returns the rows read.

        Used when a run is continued that this session did not watch from its start: the curves then
        show its earlier epochs too instead of starting at the resumed step.
        """
        import csv

        path = Path(out_dir) / "curves.csv"
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
        except (OSError, csv.Error, UnicodeDecodeError):
            return 0

        def num(v: Any) -> Optional[float]:
            try:
                f = float(v)
            except (TypeError, ValueError):
                return None
            return f if f == f else None  # NaN -> None

        self.history = []
        for r in rows:
            epoch = num(r.get("epoch"))
            if epoch is None:
                continue
            self.history.append((int(epoch), num(r.get("train_loss")), num(r.get("train_accuracy")),
                                 num(r.get("val_accuracy"))))
        if self.history and not self.epoch_curve:
            self.epoch = max(e for e, *_ in self.history)
        return len(self.history)

    def threads_text(self) -> str:
        """``1 thread (auto)`` / ``4 threads``; empty before the engine said."""
        if not self.threads:
            return ""
        return f"{self.threads} thread{'s' if self.threads != 1 else ''}" + (" (auto)" if self.threads_auto else "")

    def eta_now(self, now: Optional[float] = None) -> Optional[float]:
        """The engine's latest ETA, counted down since it was made (events pause during evaluation)."""
        if self.eta_s is None:
            return None
        if self.status != "running" or self.eta_time is None:
            return self.eta_s
        elapsed = (time.time() if now is None else now) - self.eta_time
        return max(0.0, self.eta_s - max(0.0, elapsed))


@dataclass
class Job:
    recipe: str
    data: Path
    out: Path
    epochs: Optional[int]
    device: str
    resume: bool = False
    extra: list[str] = field(default_factory=list)
    #: ``--threads``: "auto" (the free cores, re-checked while it trains) or a count
    threads: str = "auto"
    #: times this job was resumed (it stays one entry in the queue)
    resumes: int = 0
    state: JobState = None  # type: ignore[assignment]
    process: Optional[QProcess] = None
    _stdout_buf: str = ""
    _stderr_buf: str = ""

    def __post_init__(self) -> None:
        if self.state is None:
            self.state = TrainingJobState(self.recipe, Path(self.out))

    @property
    def checkpoint_path(self) -> Path:
        """Where the engine keeps this run's checkpoint (what ``--resume`` continues from)."""
        return Path(self.out) / "checkpoint.pt"

    @property
    def title(self) -> str:
        return f"{self.recipe} → {self.out}" + (" (resumed)" if self.resume else "")


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

    def folder_busy(self, out: Path) -> bool:
        """True while a queued, running or stopping job writes to ``out``."""
        target = _norm(out)
        return any(j.state.status in ACTIVE and _norm(j.out) == target for j in self.jobs)

    def can_resume(self, index: int) -> bool:
        """A job can be resumed when it stopped before its last epoch, its checkpoint is on disk and
        nothing uses the folder (a completed job has nothing left to run)."""
        if not 0 <= index < len(self.jobs):
            return False
        job = self.jobs[index]
        return (job.state.status in ("interrupted", "failed") and job.checkpoint_path.is_file()
                and not self.folder_busy(job.out))

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
        if job.resume and not job.state.step_curve and not job.state.epoch_curve:
            job.state.load_history(job.out)  # a run an earlier session started: show its epochs too
            job.state.epochs = job.state.epochs or job.epochs
        program, args = cli_command(train_args(job.recipe, job.data, job.out, job.epochs, job.device, job.resume,
                                               job.extra, threads=job.threads))
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
        job._stderr_buf += bytes(job.process.readAllStandardError()).decode("utf-8", "replace")
        # whole lines only: a read can end mid-line, which used to split one message over two log lines
        *lines, job._stderr_buf = job._stderr_buf.replace("\r", "\n").split("\n")
        self._log_stderr(job, lines)
        self.job_updated.emit(index)

    @staticmethod
    def _log_stderr(job: Job, lines: list[str]) -> None:
        for line in lines:
            line = line.replace("\x1b[K", "").strip()
            if line:
                job.state.log.append(line)

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
        if job._stderr_buf:
            self._log_stderr(job, [job._stderr_buf])
            job._stderr_buf = ""
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
            # the process is the timer's context: when a resume deletes the finished QProcess before
            # the timer fires, Qt drops the timer instead of calling into a deleted C++ object
            QTimer.singleShot(self.kill_after_ms, proc, lambda: proc.kill()
                              if proc.state() != QProcess.ProcessState.NotRunning else None)
            self.job_updated.emit(index)

    def resume(self, index: int) -> int:
        """Queue job ``index`` again with ``--resume`` (same recipe, data, folder and options).

        The job stays one entry: its curves and log go on where they stopped (an interrupted and
        resumed run used to show as two jobs, the second one's curves starting at the resumed step).
        """
        job = self.jobs[index]
        if job.state.status in ACTIVE:
            raise ValueError(f"job {index} is still {job.state.status}")
        job.resume = True
        job.resumes += 1
        if job.process is not None:
            job.process.deleteLater()  # finished; the next start makes a new one
        job.process = None
        job._stdout_buf = job._stderr_buf = ""
        job.state.status = "queued"
        job.state.message = ""
        job.state.log.append(f"resume #{job.resumes}: queued")
        self.job_updated.emit(index)
        self._start_next()
        return index

    def stop_all(self, wait_ms: int = 60000) -> None:
        for i in self.running():
            self.cancel(i)
        for job in self.jobs:
            if job.process is not None and job.process.state() != QProcess.ProcessState.NotRunning:
                if not job.process.waitForFinished(wait_ms):
                    job.process.kill()
                    job.process.waitForFinished(3000)


def _norm(path: Path) -> str:
    """A folder's comparable spelling (absolute, symlinks resolved), so two spellings of one folder match."""
    try:
        return str(Path(path).expanduser().resolve())
    except OSError:
        return str(Path(path).absolute())
