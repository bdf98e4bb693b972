"""Training checkpoints: what one holds, and how it is written so a crash never corrupts it.

A checkpoint is a plain dict saved with ``torch.save`` (temp file in the same folder + rename, see
:func:`ferkit.utils.io.atomic_torch_save`), so a run killed while saving leaves the previous
checkpoint intact. Keys (``FORMAT`` = ``"ferkit-checkpoint/1"``):

``format``, ``recipe`` (registry name), ``options`` (recipe options), ``seed``, ``epoch`` (number
of *completed* epochs; resume starts at this 0-based epoch index), ``epochs`` (planned total),
``global_step``, ``partial_epoch`` (True when written by Ctrl-C in the middle of an epoch: the
modules hold mid-epoch weights and resume restarts that epoch from its first batch),
``modules`` / ``optimizers`` / ``schedulers`` / ``scalers`` (state dicts by name), ``rng``
(torch CPU, CUDA, numpy, python states), ``extra_state`` (``recipe.extra_state()``),
``history`` (one dict per completed epoch: train + val metrics), ``best_val_accuracy``,
``wall_time_s`` (training time summed over runs), ``weights_meta`` (the
:class:`ferkit.models.weights.Weights` fields of ``modules["model"]`` including metrics, so
``--checkpoint PATH`` works wherever ``--weights NAME`` does).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch
import torch.nn as nn

from ferkit.errors import NotFoundError, UsageError
from ferkit.utils.io import atomic_torch_save

FORMAT = "ferkit-checkpoint/1"


def unwrap(module: nn.Module) -> nn.Module:
    """The bare module inside DDP / torch.compile wrappers (state-dict keys without prefixes)."""
    while True:
        if isinstance(module, torch.nn.parallel.DistributedDataParallel):
            module = module.module
        elif hasattr(module, "_orig_mod"):
            module = module._orig_mod  # torch.compile
        else:
            return module


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "python" in state:
        random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def state_dicts(objects: Mapping[str, Any]) -> dict[str, Any]:
    """``state_dict()`` of every object that has one (schedulers without state are skipped)."""
    out = {}
    for name, obj in objects.items():
        if isinstance(obj, nn.Module):
            obj = unwrap(obj)
        if hasattr(obj, "state_dict"):
            out[name] = obj.state_dict()
    return out


def load_state_dicts(objects: Mapping[str, Any], states: Mapping[str, Any], what: str, path: Path) -> None:
    missing = [k for k in objects if k not in states and hasattr(objects[k], "load_state_dict")]
    if missing:
        raise UsageError(f"{path}: checkpoint has no {what} state for {missing} "
                         f"(it holds {sorted(states)}); was it written by another recipe or options?")
    for name, obj in objects.items():
        if name not in states:
            continue
        if isinstance(obj, nn.Module):
            obj = unwrap(obj)
        obj.load_state_dict(states[name])


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    state = dict(state)
    state.setdefault("format", FORMAT)
    atomic_torch_save(state, path)


def copy_checkpoint(src: Path, dst: Path) -> None:
    """Byte copy (temp file + rename): ``best.pt`` without serialising the state a second time."""
    import os
    import shutil
    import tempfile

    dst = Path(dst)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, map_location: Optional[str | torch.device] = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by the engine; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"no checkpoint at {path}")
    try:
        # weights_only=False: RNG states hold numpy arrays and python tuples; only open your own files
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise UsageError(f"{path} cannot be read as a torch checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UsageError(f"{path} is not a ferkit training checkpoint (expected format {FORMAT!r})")
    return state
