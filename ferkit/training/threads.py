"""How many torch threads a CPU run uses: the cores actually free, not every core.

Issue 22: with one of two cores busy with another program, ``ferkit train`` on two threads ran at
23 img/s against 946 img/s on one. An OpenMP parallel region ends when its slowest thread does; a
thread that shares its core with another process waits for its time slice (milliseconds) while
its peer spins, so every small region costs a scheduler tick. Too few threads never hurt as much:
one thread on a free core trains at full speed, and a thread left out costs at most its core's
share of the work.

``threads="auto"`` (the default of ``ferkit train``, ``cv`` and ``eval``) therefore counts the
cores this process may run on (``os.sched_getaffinity``) minus the cores' worth of CPU that *other*
processes use on them, measured from ``/proc/stat`` (Linux; elsewhere the load average, else every
core). :class:`ThreadGovernor` re-measures during training, from the CPU time the other processes
used since the last look (no extra wait: our own CPU time is subtracted), every couple of seconds
and at every epoch (where CPU time cannot be read, when throughput collapses), and moves torch's
thread count to the new figure.

The OpenMP wait policy is left at its default (spin briefly, then sleep): with threads = free
cores no thread waits for a descheduled peer, and ``OMP_WAIT_POLICY=PASSIVE`` (read once, when
torch loads its OpenMP runtime) only matters for a fixed count above the free cores;
``ferkit bench --only training`` measures it beside the default so the choice can be checked on
any machine.

``FERKIT_TRAIN_THREADS`` (a number or ``auto``) is the default where no ``--threads`` is given,
e.g. to pin a test suite's runs to one count: float reductions depend on the thread count, so a
run is bit-identical to a rerun only at a fixed count.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional, Union

Threads = Union[int, str, None]

#: environment variable giving the default thread setting where no ``--threads`` is given
ENV_THREADS = "FERKIT_TRAIN_THREADS"
#: another process must use at least this many cores' worth of our cores before one counts busy
#: (a desktop's background trickle, 5-15 %, must not halve training)
BUSY_AT = 0.3
#: ...and must fall below this before a core counts free again (no flapping at the boundary)
FREE_BELOW = 0.15


def parse_threads(value: Threads) -> Union[int, str]:
    """``"auto"`` or a count >= 1 (what ``--threads`` accepts); None means the default
    (``$FERKIT_TRAIN_THREADS``, else ``"auto"``)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        value = os.environ.get(ENV_THREADS) or "auto"
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("auto", "0"):
            return "auto"
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"threads must be 'auto' (also written 0) or a whole number >= 1, got {value!r}") from None
    n = int(value)
    if n == 0:
        return "auto"
    if n < 1:
        raise ValueError(f"threads must be 'auto' (also written 0) or a whole number >= 1, got {value!r}")
    return n


def threads_arg(text: str) -> Union[int, str]:
    """argparse ``type=`` for ``--threads auto|N``."""
    import argparse

    try:
        return parse_threads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (affinity, e.g. ``taskset`` or a container's cpuset)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return list(range(os.cpu_count() or 1))


def _proc_stat(cpus: list[int]) -> Optional[tuple[float, float]]:
    """(busy seconds, elapsed seconds) summed over ``cpus`` since boot, from ``/proc/stat``."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cpus}
    tick = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
    busy = total = 0.0
    seen = 0
    for line in lines:
        parts = line.split()
        if not parts or parts[0] not in wanted:
            continue
        values = [float(v) for v in parts[1:]]
        # user nice system idle iowait irq softirq steal (guest time is already inside user/nice)
        idle = values[3] + (values[4] if len(values) > 4 else 0.0)
        all_ = sum(values[:8])
        busy += all_ - idle
        total += all_
        seen += 1
    if seen == 0:
        return None
    return busy / tick, total / tick / seen


def _own_cpu_s() -> float:
    """CPU seconds of every thread of this process."""
    t = os.times()
    return t.user + t.system


@dataclass(frozen=True)
class CoreReport:
    """What :func:`free_cores` found: the allowed cores, how many cores' worth other programs use, the free count."""

    allowed: int
    other: Optional[float]
    free: int
    how: str

    def describe(self) -> str:
        cores = f"{self.allowed} core{'s' if self.allowed != 1 else ''}"
        if self.other is None:
            return f"{self.free} of {cores} ({self.how})"
        return f"{self.free} of {cores} free (other programs use {self.other:.1f} cores' worth, {self.how})"


class CoreProbe:
    """CPU time other processes used on this process's cores between two :meth:`measure` calls.

    Our own CPU time (all threads) is subtracted, so a probe taken while training measures the
    competition, not the training. ``count_own=True`` keeps it: the app's training dialog asks
    what a training *subprocess* would find, and the app's own work (live video) competes with it.
    """

    def __init__(self, cpus: Optional[list[int]] = None, count_own: bool = False) -> None:
        self.cpus = cpus or allowed_cpus()
        self.count_own = count_own
        self._last = self._sample()

    def _sample(self) -> Optional[tuple[float, float, float]]:
        stat = _proc_stat(self.cpus)
        if stat is None:
            return None
        return stat[0], 0.0 if self.count_own else _own_cpu_s(), time.monotonic()

    def measure(self) -> Optional[float]:
        """Cores' worth of CPU others used since the previous call (None: not measurable here)."""
        now = self._sample()
        last, self._last = self._last, now
        if now is None or last is None:
            return None
        wall = now[2] - last[2]
        if wall <= 0.02:  # /proc/stat counts in 10 ms ticks: too short to say anything
            return None
        other = ((now[0] - last[0]) - (now[1] - last[1])) / wall
        return max(0.0, min(float(len(self.cpus)), other))


def busy_cores(other: float, currently_busy: Optional[int] = None) -> int:
    """Cores to leave to other processes using ``other`` cores' worth, with hysteresis.

    A core counts busy from :data:`BUSY_AT` of a core up; once counted, it counts free again only
    below :data:`FREE_BELOW`, so a load hovering at the threshold does not flip threads every epoch.
    """
    rising = int(math.floor(other + 1.0 - BUSY_AT))
    if currently_busy is None or rising >= currently_busy:
        return max(0, rising)
    falling = int(math.floor(other + 1.0 - FREE_BELOW))
    return max(0, min(currently_busy, falling))


def free_cores(sample_s: float = 0.25) -> CoreReport:
    """Cores free for this process now: allowed cores minus the cores other processes keep busy.

    Measures ``sample_s`` seconds of ``/proc/stat``; without it, the 1-minute load average
    (which counts this process too, so it is only a fallback); elsewhere every allowed core.
    """
    cpus = allowed_cpus()
    n = len(cpus)
    probe = CoreProbe(cpus)
    if probe._last is not None:
        time.sleep(max(0.05, sample_s))
        other = probe.measure()
        if other is not None:
            return CoreReport(n, other, max(1, n - busy_cores(other)), f"measured over {sample_s:.2f} s")
    if hasattr(os, "getloadavg"):
        load = os.getloadavg()[0]
        # the load average counts this process's runnable threads too: at most one of ours while we decide
        other = max(0.0, load - 1.0)
        return CoreReport(n, other, max(1, n - busy_cores(other)), "1-minute load average")
    return CoreReport(n, None, n, "load not measurable here: every allowed core")


@dataclass
class ThreadChoice:
    """The thread setting of a run: the count in use, whether it follows the load, and why."""

    threads: int
    auto: bool
    reason: str


def choose_threads(requested: Threads = None, sample_s: float = 0.25) -> ThreadChoice:
    """The thread count to start with: ``requested`` when a number, the free cores for ``auto``."""
    setting = parse_threads(requested)
    if setting != "auto":
        return ThreadChoice(int(setting), False, f"{_n_threads(int(setting))} (--threads)")
    report = free_cores(sample_s)
    return ThreadChoice(report.free, True, f"{_n_threads(report.free)} (auto: {report.describe()})")


def _n_threads(n: int) -> str:
    return f"{n} thread{'s' if n != 1 else ''}"


class ThreadGovernor:
    """Keeps an ``auto`` run's torch thread count at the free cores while it trains.

    Every :data:`WINDOW_S` seconds of steps (:meth:`step_done`) and at every epoch start
    (:meth:`epoch_started`) it re-measures what other programs use of our cores since the last
    look, our own CPU time subtracted, so a program that starts or stops mid-epoch is followed
    within seconds (an epoch of a big dataset lasts minutes). Where that cannot be measured (no
    ``/proc/stat``), a window whose throughput collapsed below :data:`COLLAPSE` of the best window
    at the same count drops one thread. A fixed ``--threads N`` is never changed.
    """

    #: without a CPU-time probe: a window slower than this share of the best at the same count is a collapse
    COLLAPSE = 0.5
    #: seconds of training per look
    WINDOW_S = 2.0

    def __init__(self, choice: ThreadChoice, apply: Callable[[int], None],
                 log: Callable[[str], None] = lambda _m: None, probe: Optional[CoreProbe] = None) -> None:
        self.choice = choice
        self.threads = choice.threads
        self._apply = apply
        self._log = log
        self.probe = probe if probe is not None else (CoreProbe() if choice.auto else None)
        self.allowed = len(self.probe.cpus) if self.probe is not None else len(allowed_cpus())
        self._busy: Optional[int] = max(0, self.allowed - self.threads) if choice.auto else None
        self._best: dict[int, float] = {}
        self._window_images = 0
        self._window_start = time.monotonic()
        #: (old count, new count, why) of every change, for the bench and the tests
        self.changes: list[tuple[int, int, str]] = []

    def _set(self, n: int, why: str) -> int:
        old, self.threads = self.threads, n
        self._apply(n)
        self.changes.append((old, n, why))
        self._log(f"threads {old} -> {n} ({why})")
        return n

    def recheck(self, why: str) -> Optional[int]:
        """Re-measure the cores and move to the free count. Returns the new count when it changed."""
        if not self.choice.auto or self.probe is None:
            return None
        other = self.probe.measure()
        if other is None:
            return None
        self._busy = busy_cores(other, self._busy)
        free = max(1, self.allowed - self._busy)
        if free == self.threads:
            return None
        return self._set(free, f"{why}: other programs use {other:.1f} of {self.allowed} cores")

    def epoch_started(self) -> Optional[int]:
        return self.recheck("epoch start")

    def step_done(self, images: int) -> Optional[int]:
        """Count a step's images; at the end of each window, look at the cores (or the throughput) again."""
        if not self.choice.auto:
            return None
        self._window_images += max(0, int(images))
        elapsed = time.monotonic() - self._window_start
        if elapsed < self.WINDOW_S:
            return None
        rate = self._window_images / elapsed
        self._window_images, self._window_start = 0, time.monotonic()
        if self.probe is not None and self.probe._last is not None:
            return self.recheck("re-check during the epoch")
        best = self._best.get(self.threads, 0.0)
        self._best[self.threads] = max(best, rate)
        if best and rate < self.COLLAPSE * best and self.threads > 1:
            return self._set(self.threads - 1, f"throughput fell to {rate:.0f} img/s from {best:.0f}")
        return None
