"""ferkit: identity-aware facial expression recognition and synthesis.

The public doors are few on purpose: :func:`create_model` builds an architecture by name,
:func:`load_weights` gives a ready model plus the preprocessing it was trained with, and
:func:`list_models` / :func:`list_weights` say what exists. Everything else is reached from them.
"""
from ferkit.models.registry import create_model, list_models
from ferkit.models.weights import Weights, get_weights, list_weights, load_weights

__all__ = ["create_model", "list_models", "Weights", "get_weights", "list_weights", "load_weights"]
__version__ = "0.1.0"
