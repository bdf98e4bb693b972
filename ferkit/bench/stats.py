"""Summaries of repeated timings, and the machine/software facts a benchmark must record.

Every figure ``ferkit bench`` prints is a median over repeated runs with the min and max beside it
(and p95 for latencies): on a shared or thermally throttled machine a single run is noise.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch


#: whether the benchmark flushes subnormal floats to zero (see :func:`flush_denormals`)
FLUSH_DENORMAL = False


def flush_denormals() -> bool:
    """:func:`ferkit.utils.denormals.flush_denormals`, remembered for the report's environment row."""
    from ferkit.utils.denormals import flush_denormals as flush

    global FLUSH_DENORMAL
    FLUSH_DENORMAL = flush()
    return FLUSH_DENORMAL


def summary(values: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """median / p95 / min / max / n of ``values`` (rounded)."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return {"median": None, "p95": None, "min": None, "max": None, "n": 0}
    r = lambda x: round(float(x), digits)  # noqa: E731
    return {"median": r(np.median(v)), "p95": r(np.percentile(v, 95)), "min": r(v.min()), "max": r(v.max()),
            "n": int(v.size)}


def time_calls(fn: Callable[[], object], repeat: int, warmup: int = 2, max_time_s: float | None = None,
               min_calls: int = 5) -> list[float]:
    """Wall milliseconds of up to ``repeat`` calls after ``warmup`` calls.

    ``max_time_s`` stops early (after at least ``min_calls``) so a slow model costs seconds, not minutes.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeat:
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
        if max_time_s is not None and len(times) >= min_calls and time.perf_counter() - start > max_time_s:
            break
    return times


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
        return str(getattr(mod, "__version__", "?"))
    except Exception:  # noqa: BLE001 - a missing optional package is just "absent"
        return None


def environment() -> dict[str, Any]:
    """Device, threads, versions and the machine's load (the context every figure depends on)."""
    cuda = torch.cuda.is_available()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda": torch.cuda.get_device_name(0) if cuda else None,
        "load_average_1_5_15": load,
        "flush_denormal": FLUSH_DENORMAL,
        "versions": {"torch": torch.__version__, "onnxruntime": _version("onnxruntime"), "numpy": np.__version__,
                     "opencv": _version("cv2"), "mediapipe": _version("mediapipe"), "onnx": _version("onnx")},
    }


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))
