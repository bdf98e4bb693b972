"""Package scans that replace hand-kept import lines.

The model and recipe registries fill themselves when their modules are imported; importing every
module of the package (instead of one listed import per file) means a new paper's file registers
itself, and a forgotten import line can no longer hide a model or a recipe.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil


@functools.lru_cache(maxsize=None)
def import_submodules(package: str) -> tuple[str, ...]:
    """Import every module directly inside ``package`` (once per process); returns their names."""
    pkg = importlib.import_module(package)
    names = tuple(m.name for m in pkgutil.iter_modules(pkg.__path__, f"{package}.") if not m.ispkg)
    for name in names:
        importlib.import_module(name)
    return names
