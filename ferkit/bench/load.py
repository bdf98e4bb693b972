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

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from ferkit.errors import UsageError
from ferkit.training.threads import allowed_cpus

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


@contextmanager
def background_load(cores: int = 1, limit_s: float = 1800.0, nice: int = 0) -> Iterator[dict[str, Any]]:
    """Keep ``cores`` CPU cores busy (the last ones this process may use) for the ``with`` block.

    ``nice`` > 0 lowers the loops' priority by that much (a desktop's low-priority background job,
    the situation issue 22 describes); 0 competes at this process's own priority.

    Yields ``{"processes": pids, "cpus": pinned cores (None where pinning is unavailable)}``.
    """
    if cores < 1:
        raise UsageError(f"cores must be at least 1, got {cores}")
    cpus = allowed_cpus()  # not on Linux: every core, unpinned; the OS places the loops
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


def json_row_in_child(cmd: list[str], *, timeout_s: float, load_cores: int = 0, load_nice: int = 0,
                      env: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Run a benchmark child (``cmd`` prints one JSON row as its last stdout line) next to
    ``load_cores`` busy loops; returns that row with the load it ran beside.

    A fresh interpreter per row gives each row its own OpenMP runtime (thread count, wait policy)
    and its own memory figure. A child that fails or times out gives a row with ``error``, so one
    bad row does not lose a whole benchmark table.
    """
    load: dict[str, Any] = {"cpus": []}
    try:
        if load_cores > 0:
            with background_load(load_cores, nice=load_nice) as load:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
        else:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s (machine busy? try a shorter run)",
                "background_load_cores": load_cores}
    if proc.returncode != 0:
        return {"error": " | ".join(proc.stderr.strip().splitlines()[-3:]) or f"exit {proc.returncode}",
                "background_load_cores": load_cores}
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["background_load_cores"] = load_cores
    if load_cores:  # an idle row says only that it ran without load
        row.update(background_load_cpus=load["cpus"], background_load_nice=load_nice)
    return row
