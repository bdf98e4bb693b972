"""A controlled "busy desktop" for the benchmark: busy-loop processes pinned to cores.

Issue 14: with one core busy elsewhere, torch's default of one intra-op thread per core made a
5 ms forward take 258 ms (threads spin-waiting for a core that is not free). ``ferkit bench``
therefore measures the live pipeline twice, idle and next to :func:`background_load`, and reports
the ratio. The load is a plain Python busy loop (one process per core, pinned with
``sched_setaffinity`` where the OS has it), always stopped when the ``with`` block ends, on an
error or Ctrl-C alike; should the benchmark itself be killed, each loop notices that its parent
is gone within milliseconds and exits, and it never outlives ``limit_s``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator

from ferkit.errors import UsageError

#: the loop: spin, and every ~few ms check that the parent still exists and the time limit
BUSY_LOOP = """
import os, time
os.nice({nice})
parent, end = os.getppid(), time.monotonic() + {limit_s}
while True:
    for _ in range(100000):
        pass
    if os.getppid() != parent or time.monotonic() > end:
        break
"""


def _cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux: no pinning, the OS places the loops
        return list(range(os.cpu_count() or 1))


@contextmanager
def background_load(cores: int = 1, limit_s: float = 1800.0, nice: int = 0) -> Iterator[dict[str, Any]]:
    """Keep ``cores`` CPU cores busy (the last ones this process may use) for the ``with`` block.

    ``nice`` > 0 lowers the loops' priority by that much (a desktop's low-priority background job,
    the situation issue 22 describes); 0 competes at this process's own priority.

    Yields ``{"processes": pids, "cpus": pinned cores (None where pinning is unavailable)}``.
    """
    if cores < 1:
        raise UsageError(f"cores must be at least 1, got {cores}")
    cpus = _cpus()
    procs: list[subprocess.Popen] = []
    pinned: list[Any] = []
    try:
        for i in range(cores):
            proc = subprocess.Popen([sys.executable, "-c", BUSY_LOOP.format(limit_s=float(limit_s), nice=max(0, int(nice)))],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(proc)
            cpu = cpus[-1 - (i % len(cpus))]
            try:
                os.sched_setaffinity(proc.pid, {cpu})
                pinned.append(cpu)
            except (AttributeError, OSError):
                pinned.append(None)
        time.sleep(0.3)  # let the loops reach full speed before anything is measured
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"the background load process exited at once (status {proc.returncode})")
        yield {"processes": [p.pid for p in procs], "cpus": pinned}
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
