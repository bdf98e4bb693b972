"""Work-around for a reference-count bug in PySide6 6.12.0's ``SignalInstance.emit``.

Measured here (Python 3.11, PySide6 6.12.0): every Python call of ``signal.emit(...)`` returns
``True`` without owning a reference to it, so each call lowers ``True``'s reference count by one.
On Python < 3.12 (no immortal objects) a live view that emits a few signals per frame drives it
to zero within minutes and the interpreter aborts with "Fatal Python error: bool_dealloc".
``emit`` below checks once whether the running PySide6 has the bug and, if so, gives back the
missing reference after each call. With a fixed PySide6 it is a plain ``emit``.
"""
from __future__ import annotations

import ctypes
import sys
from typing import Any

from PySide6.QtCore import QObject, Signal

_incref = ctypes.pythonapi.Py_IncRef
_incref.argtypes = [ctypes.py_object]
_incref.restype = None


class _Probe(QObject):
    ping = Signal()


def _emit_drops_a_reference() -> bool:
    probe = _Probe()
    before = sys.getrefcount(True), sys.getrefcount(False)
    results = [probe.ping.emit() for _ in range(16)]
    after = sys.getrefcount(True), sys.getrefcount(False)
    held = sum(1 for r in results if r is True), sum(1 for r in results if r is False)
    lost = (before[0] + held[0] - after[0]) + (before[1] + held[1] - after[1])
    del results
    if lost > 0:  # restore what the probe itself took
        for _ in range(lost):
            _incref(True)
    return lost >= 16


EMIT_DROPS_REFERENCE: bool = _emit_drops_a_reference()


def emit(signal: Any, *args: Any) -> Any:
    """``signal.emit(*args)``, keeping Python's reference counts right on buggy PySide6 builds."""
    result = signal.emit(*args)
    if EMIT_DROPS_REFERENCE and isinstance(result, bool):
        _incref(result)
    return result
