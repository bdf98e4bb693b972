"""``ferkit-app --startup-probe``: seconds from process start to the first processed frame on screen.

Runs what a user's launch runs (``app.main.main`` without ``--source``: the main window, the
default model, the camera or, with none, the sample video) offscreen, and stops at the first
``MainWindow.result_shown`` (a frame decoded, faces detected and aligned, the model run, the
result drawn). The clock starts when the kernel started this process (``/proc/self/stat``), so
the bootloader, loading the Python runtime and every import count, as a user would feel them.
On a shared, overloaded machine the wall time mostly measures the other processes, so the CPU
time the process used until the first frame is reported too.
Prints one JSON object; exit 0 when a frame was shown within the timeout, 1 otherwise.
"""
from __future__ import annotations

import json
import os
import sys
import time

_T_PYTHON = time.monotonic()  # first line of Python in this process (entry.py imports us first)


def process_age_s() -> float | None:
    """Seconds since the kernel started this process (Linux); None where /proc is absent."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            stat = f.read()
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime, after "comm"
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def run(timeout_s: float = 120.0) -> int:
    age_at_python = process_age_s()
    age_offset = (age_at_python or 0.0) - (time.monotonic() - _T_PYTHON)  # process age when _T_PYTHON was taken
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([sys.argv[0]])
    t_qt = time.monotonic()
    from app.main_window import MainWindow

    window = MainWindow()
    window.show()
    t_window = time.monotonic()
    first: list[float] = []
    cpu: list[float] = []

    def on_result(_result) -> None:
        if not first:
            first.append(time.monotonic())
            t = os.times()
            cpu.append(t.user + t.system)  # every thread of this process since it started

    window.result_shown.connect(on_result)
    window.start_default_source(None)
    end = time.monotonic() + timeout_s
    while not first and time.monotonic() < end:
        app.processEvents()
        time.sleep(0.002)
    primary = window.handles.get("primary")
    out = {
        "frozen": bool(getattr(sys, "frozen", False)),
        "ok": bool(first),
        "model": primary.name if primary is not None else None,
        "source": str(window.state.source.path or window.state.source.mode),
        "process_start_to_python_s": round(age_offset, 3) if age_at_python is not None else None,
        "process_start_to_qt_s": round(age_offset + t_qt - _T_PYTHON, 3),
        "process_start_to_window_s": round(age_offset + t_window - _T_PYTHON, 3),
        "process_start_to_first_frame_s": round(age_offset + first[0] - _T_PYTHON, 3) if first else None,
        # CPU seconds spent until then: what the wall time would be on an otherwise idle machine
        # if nothing ran in parallel (an upper bound there), independent of other users' load
        "cpu_s_to_first_frame": round(cpu[0], 3) if cpu else None,
        "cpu_count": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0],
    }
    window.shutdown()
    print(json.dumps(out))
    return 0 if first else 1


if __name__ == "__main__":
    sys.exit(run())
