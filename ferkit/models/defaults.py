"""Which shipped weights run live on this machine when nobody has chosen: one rule for the app and the bench.

Without a CUDA GPU and with few cores, every face of every frame goes through the expression model
on the CPU, on one intra-op thread, while video decoding, the face detector, the explainers and the
GUI need the same cores; the per-face forward then decides the frame rate, so the distilled
``ferkit-live`` (about 1 point below its teacher, ten times faster per face than ``tfe-jl``) is the
better default there. With a GPU or more cores the most accurate default is affordable.
``ferkit bench --only pipeline`` measures the model the app would start with, so its figures are
the ones a user of this machine sees.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

#: the weights ``ferkit predict``, the library and the app use when none are named (and the machine is not weak)
DEFAULT_WEIGHTS = "tfe-jl"
#: the small distilled FER+ model (``resnet_live``, no TTA, int8 ONNX)
LIVE_WEIGHTS = "ferkit-live"
#: a machine without a CUDA GPU and with at most this many usable CPU cores counts as weak
WEAK_MACHINE_MAX_CORES = 4


@dataclass(frozen=True)
class Machine:
    """What the default model depends on: usable CPU cores and whether torch sees a CUDA GPU."""

    cores: int
    cuda: bool


def this_machine() -> Machine:
    """This process's machine: the cores it may run on (its CPU affinity, e.g. a container's share,
    not the host's count) and CUDA as torch sees it."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        cores = os.cpu_count() or 1
    return Machine(cores=max(1, cores), cuda=torch.cuda.is_available())


def is_weak_machine(machine: Machine) -> bool:
    """No CUDA GPU and at most :data:`WEAK_MACHINE_MAX_CORES` usable CPU cores (see the module docstring)."""
    return not machine.cuda and machine.cores <= WEAK_MACHINE_MAX_CORES


def live_default_weights(machine: Optional[Machine] = None, names: Optional[Sequence[str]] = None) -> str:
    """:data:`LIVE_WEIGHTS` on a weak machine when shipped, else the library's default (``tfe-jl``)."""
    from ferkit.models.weights import list_weights

    machine = this_machine() if machine is None else machine
    names = list_weights() if names is None else list(names)
    return LIVE_WEIGHTS if is_weak_machine(machine) and LIVE_WEIGHTS in names else DEFAULT_WEIGHTS
