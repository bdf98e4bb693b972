"""ferkit's desktop demo (PySide6). Entry point: :func:`app.main.main` (``ferkit-app``, ``python -m app``)."""
from app import qtcompat as _qtcompat

_qtcompat.apply()  # before any Qt code runs: see app/qtcompat.py (PySide6 6.12 refcount bug on Python 3.11)
