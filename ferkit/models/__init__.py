"""Architectures. Importing this package registers every model (one module per paper)."""
from ferkit.models.outputs import ModelOutput
from ferkit.models.registry import create_model, list_models, register_model

# one import per architecture module; each runs its @register_model decorators
# (add a line here when you add an architecture file)

__all__ = ["ModelOutput", "create_model", "list_models", "register_model"]
