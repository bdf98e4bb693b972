"""Architectures. Importing this package registers every model (one module per paper).

Every module here is imported by a package scan (:func:`ferkit.models.registry._ensure_loaded`),
so a new architecture file registers itself without an import line in this file.
"""
from ferkit.models.outputs import ModelOutput
from ferkit.models.registry import _ensure_loaded, create_model, list_models, register_model

_ensure_loaded()

__all__ = ["ModelOutput", "create_model", "list_models", "register_model"]
