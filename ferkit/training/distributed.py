"""torchrun / DDP plumbing: who am I, which device is mine, and the few collectives the engine needs.

The same ``ferkit train`` command runs alone or under ``torchrun --nproc_per_node=N``; torchrun
announces itself through the ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` environment variables.
With more than one process the group is initialised here (NCCL on CUDA, gloo on CPU) and each
process takes GPU ``LOCAL_RANK``. Every helper is a no-op for a single process, so the engine has
one code path.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Union

import torch
import torch.distributed as dist

from ferkit.errors import UnavailableError
from ferkit.models.weights import resolve_device


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    #: True when this module called ``init_process_group`` (and must destroy it)
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) when run alone."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def setup(device: Union[str, torch.device, None] = "auto") -> DistInfo:
    """Resolve the device and join the process group when launched by torchrun with N > 1."""
    rank, world_size, local_rank = env_world()
    dev = resolve_device(device)
    if world_size <= 1:
        return DistInfo(0, 1, 0, dev)
    if dev.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UnavailableError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA GPUs are visible; "
                                   "lower --nproc_per_node")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        # N processes on one CPU: share the cores instead of each one taking them all
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world_size))))
    initialized_here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        initialized_here = True
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, initialized_here)


def teardown(info: DistInfo) -> None:
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Element-wise sum over ranks (one collective for the whole list)."""
    if not info.distributed:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when it is True on at least one (so all ranks stop at the same step)."""
    if not info.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()

