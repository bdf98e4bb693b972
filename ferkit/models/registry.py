"""Name -> builder table for every architecture (timm-style ``@register_model``).

One door in: :func:`create_model`. Keyword arguments that are ``None`` are dropped so a single
CLI can pass every option to every architecture and each builder keeps its own defaults.

What an architecture *is* (input size, channels, classes, which outputs it has) is read from the
model itself — :func:`model_traits` builds it on the ``meta`` device, which allocates nothing — so
the bench, the ONNX tests, the app's explainers and the commands never keep their own lists of
names. What cannot be read from a build is recorded next to the builder by ``@register_model``:
a small configuration with the same layers (``small_cfg``, for tests and quick checks) and whether
the network is CPU-sized (``cpu_sized``).

Every module of this package is imported by :func:`_ensure_loaded` (a package scan), so adding an
architecture is one new file with a ``@register_model`` builder and no import line elsewhere.
"""
from __future__ import annotations

import fnmatch
import functools
import inspect
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from ferkit.errors import UnknownNameError
from ferkit.utils.discovery import import_submodules

ModelBuilder = Callable[..., nn.Module]

#: the optional outputs a model may have (``ModelOutput`` fields beyond the logits)
FEATURES = ("identity", "gates", "synthesis")


@dataclass(frozen=True)
class ModelTraits:
    """What one configuration of an architecture takes and gives, as its built model says."""

    #: input side the model is built for; None for fully convolutional nets (any size; 48 is used)
    input_size: Optional[int]
    in_channels: int
    num_classes: int
    has_identity: bool
    has_gates: bool
    has_synthesis: bool

    def has(self, feature: str) -> bool:
        """``has("gates")`` etc.; ``feature`` is one of :data:`FEATURES`."""
        if feature not in FEATURES:
            raise ValueError(f"feature must be one of {', '.join(FEATURES)}, not {feature!r}")
        return bool(getattr(self, f"has_{feature}"))


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: ModelBuilder
    paper: str
    description: str
    #: a configuration with every layer of the default one but fewer channels/classes: what the ONNX
    #: export tests and quick checks build (the default of a paper-size net is too slow for them)
    #: (its input side is the build's own ``input_size``, 48 for fully convolutional nets)
    small_cfg: Mapping[str, Any] = field(default_factory=dict)
    #: False for paper-size networks meant for GPU training: CPU benchmarks measure them only when named
    cpu_sized: bool = True

    @property
    def default_cfg(self) -> ModelTraits:
        """The traits of the default build (timm's ``default_cfg``); an architecture whose builder
        needs arguments (an ensemble of members) is described by its ``small_cfg`` build."""
        required = [p for p in inspect.signature(self.builder).parameters.values()
                    if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        return model_traits(self.name, self.small_cfg if required else None)


_MODELS: dict[str, ModelInfo] = {}


def register_model(name: str, *, paper: str, description: str = "", small_cfg: Optional[Mapping[str, Any]] = None,
                   cpu_sized: bool = True) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register ``builder`` as architecture ``name`` (see :class:`ModelInfo` for the keywords)."""
    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice ({_MODELS[name].builder} and {builder})")
        doc = (builder.__doc__ or "").strip().splitlines()
        _MODELS[name] = ModelInfo(name, builder, paper, description or (doc[0] if doc else ""),
                                  dict(small_cfg or {}), bool(cpu_sized))
        return builder

    return decorator


def _ensure_loaded() -> None:
    """Import every module of :mod:`ferkit.models` once, which runs their ``@register_model``."""
    import_submodules("ferkit.models")


def list_models(pattern: str = "*") -> list[str]:
    _ensure_loaded()
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def model_info(name: str) -> ModelInfo:
    _ensure_loaded()
    try:
        return _MODELS[name]
    except KeyError:
        raise UnknownNameError(f"unknown model {name!r}; known models: {', '.join(sorted(_MODELS))}") from None


def architectures_with(*features: str, cpu_sized: Optional[bool] = None) -> list[str]:
    """Registered architectures whose default build has every one of ``features`` (see :data:`FEATURES`),
    optionally only the CPU-sized ones (or only the others)."""
    return [n for n in list_models() if all(model_info(n).default_cfg.has(f) for f in features)
            and (cpu_sized is None or model_info(n).cpu_sized == cpu_sized)]


def create_model(name: str, **cfg) -> nn.Module:
    """Build architecture ``name``; ``cfg`` entries that are None fall back to the builder's defaults."""
    info = model_info(name)
    return info.builder(**{k: v for k, v in cfg.items() if v is not None})


def model_traits(name: str, cfg: Optional[Mapping[str, Any]] = None) -> ModelTraits:
    """The traits of ``create_model(name, **cfg)``, read from a build on the meta device (no memory, no weights).

    Cached per (name, cfg): the app and the bench ask once per shipped card, not per frame.
    """
    return _traits(name, json.dumps(dict(cfg or {}), sort_keys=True, default=str))


class _SkipRandomFills(TorchFunctionMode):
    """Skips in-place random fills (``normal_``, ``uniform_``, ...) while a model is built on ``meta``.

    A meta tensor has no values to fill, and ``Tensor.normal_`` on meta runs a decomposition that
    imports ``torch._dynamo`` (1-3 CPU s, measured by the app's startup probe) just to compute
    nothing. Torch-function modes are per thread, so a model built at the same time in a worker
    thread keeps its real initialisation.
    """

    FILLS = frozenset({torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.bernoulli_,
                       torch.Tensor.exponential_, torch.Tensor.log_normal_, torch.Tensor.cauchy_,
                       torch.Tensor.geometric_, torch.Tensor.random_})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.FILLS:
            return args[0]
        return func(*args, **(kwargs or {}))


@functools.lru_cache(maxsize=256)
def _traits(name: str, cfg_json: str) -> ModelTraits:
    cfg = json.loads(cfg_json)
    try:
        with torch.device("meta"), _SkipRandomFills():
            model = create_model(name, **cfg)
    except (RuntimeError, NotImplementedError):  # a constructor that computes with tensor values needs real ones
        model = create_model(name, **cfg)
    size = getattr(model, "input_size", None)
    return ModelTraits(input_size=int(size) if size else None,
                       in_channels=int(getattr(model, "in_channels", None) or 1),
                       num_classes=int(getattr(model, "num_classes", 0)),
                       has_identity=bool(getattr(model, "has_identity", False)),
                       has_gates=bool(getattr(model, "has_gates", False)),
                       has_synthesis=bool(getattr(model, "has_synthesis", False)))
