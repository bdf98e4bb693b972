"""Work-around for reference-count bugs of PySide6 6.12.0 on Python < 3.12.

Measured here (Python 3.11.2, PySide6 6.12.0 wheels): every call of a Qt method that returns
``void`` (``setText``, ``setChecked``, ``QTimer.singleShot``...) hands back ``None`` without a
reference, and ``SignalInstance.emit`` does the same with ``True``; each call lowers that
object's reference count by one. Python 3.12+ made these singletons immortal so the bug is
invisible there, but on 3.11 a live view (tens of Qt calls per frame) drives ``None``'s count to
zero within minutes and the interpreter aborts: "Fatal Python error: none_dealloc".

:func:`apply` probes once whether the running PySide6 has the bug and, if so, gives ``None``,
``True`` and ``False`` a reference count so large (2**40) that no session can exhaust it, which
is what Python 3.12 does for them anyway. These objects are never freed in either case, so
nothing else changes. Importing :mod:`app` applies it before any Qt code runs.
"""
from __future__ import annotations

import ctypes
import sys

_BIG = 1 << 40
applied = False
bug_found: bool | None = None


def _none_lost_per_call() -> float:
    from PySide6.QtCore import QObject

    probe = QObject()
    before = sys.getrefcount(None)
    for _ in range(64):
        probe.setObjectName("probe")
    return (before - sys.getrefcount(None)) / 64


def apply() -> bool:
    """Make None/True/False effectively immortal when PySide6 over-releases them; True if done."""
    global applied, bug_found
    if applied or sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return applied
    try:
        bug_found = _none_lost_per_call() >= 0.9
    except ImportError:  # no Qt: nothing to protect
        return False
    if bug_found:
        for obj in (None, True, False):
            # ob_refcnt is the first field of every CPython object; the GIL is held here
            ctypes.c_ssize_t.from_address(id(obj)).value += _BIG
        applied = True
    return applied
