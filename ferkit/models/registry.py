"""Name -> builder table for every architecture (timm-style ``@register_model``).

One door in: :func:`create_model`. Keyword arguments that are ``None`` are dropped so a single
CLI can pass every option to every architecture and each builder keeps its own defaults.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from ferkit.errors import UnknownNameError

ModelBuilder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: ModelBuilder
    paper: str
    description: str


_MODELS: dict[str, ModelInfo] = {}


def register_model(name: str, *, paper: str, description: str = "") -> Callable[[ModelBuilder], ModelBuilder]:
    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice ({_MODELS[name].builder} and {builder})")
        doc = (builder.__doc__ or "").strip().splitlines()
        _MODELS[name] = ModelInfo(name, builder, paper, description or (doc[0] if doc else ""))
        return builder

    return decorator


def _ensure_loaded() -> None:
    # importing the package runs every architecture module's @register_model
    import ferkit.models  # noqa: F401


def list_models(pattern: str = "*") -> list[str]:
    _ensure_loaded()
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def model_info(name: str) -> ModelInfo:
    _ensure_loaded()
    try:
        return _MODELS[name]
    except KeyError:
        raise UnknownNameError(f"unknown model {name!r}; known models: {', '.join(sorted(_MODELS))}") from None


def create_model(name: str, **cfg) -> nn.Module:
    """Build architecture ``name``; ``cfg`` entries that are None fall back to the builder's defaults."""
    info = model_info(name)
    return info.builder(**{k: v for k, v in cfg.items() if v is not None})
