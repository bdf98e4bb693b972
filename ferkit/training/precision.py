"""Which floating-point precision a training run uses, decided once per run.

bf16 autocast roughly doubles training throughput on CPUs with native bf16 dot products
(AVX512-BF16, AMX) and on every recent GPU, at no accuracy cost for these conv nets: master
weights, optimiser state and the loss stay fp32 (autocast only lowers the matmuls/convolutions).
On a CPU without those instructions bf16 is emulated and slower than fp32, hence ``auto``.
"""
from __future__ import annotations

import contextlib
from functools import lru_cache
from pathlib import Path
from typing import Any, ContextManager, Optional

import torch

from ferkit.errors import UsageError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when /proc/cpuinfo lists avx512_bf16 or amx_bf16 (Linux; other systems: False)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for ``precision`` on ``device``; None means plain fp32.

    ``auto``: bf16 on CUDA devices that support it (fp16 on older ones) and on CPUs with native
    bf16; fp32 elsewhere. An explicit choice the device cannot honour is an error, not a silent
    fallback, so a reported number never comes from a precision other than the one asked for.
    """
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    cuda = device.type == "cuda"
    if precision == "fp32":
        return None
    if precision == "auto":
        if cuda:
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else None
    if precision == "fp16":
        if not cuda:
            raise UsageError("--precision fp16 needs a CUDA device; on a CPU use bf16 or fp32")
        return torch.float16
    if cuda and not torch.cuda.is_bf16_supported():
        raise UsageError("--precision bf16: this GPU has no bf16 support; use fp16 or auto")
    return torch.bfloat16


def precision_name(dtype: Optional[torch.dtype]) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> ContextManager[Any]:
    """Autocast for ``dtype`` on ``device`` (a no-op for fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def memory_format(choice: str, device: torch.device) -> torch.memory_format:
    """``--channels-last auto|on|off`` -> the memory format of models and batches (auto: channels_last
    on CPU, where it is faster for these small conv nets, contiguous elsewhere)."""
    on = choice == "on" or (choice == "auto" and device.type == "cpu")
    return torch.channels_last if on else torch.contiguous_format
