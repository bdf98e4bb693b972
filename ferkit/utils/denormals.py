"""Subnormal floats flushed to zero in torch's CPU kernels, with numpy kept quiet and right.

Why flush: trained small nets produce subnormal activations and fp16 cards upcast to subnormal
weights; on x86 every operation touching one takes a slow microcode path (measured here: the
shipped ResNet18 batch-1 forward 198 ms -> 7 ms). Results change only below 1e-38, far beneath any
score ferkit shows. ONNX Runtime already does this.

Why prime numpy first: numpy's ``finfo`` warns "The value of the smallest subnormal for <class
'numpy.float64'> type is zero." when first asked while denormals are flushed, and matplotlib asks
whenever it draws (curves, confusion matrices), so the warning landed in job logs and in
``ferkit eval --report``. Measuring every float type before flushing caches the true values.
"""
from __future__ import annotations

import numpy as np
import torch

#: numpy's warning for a float type first measured while flushing is on (for scoped filters)
SUBNORMAL_WARNING = r"The value of the smallest subnormal for <class '[\w.]+'> type is zero"


def flush_denormals() -> bool:
    """Flush subnormals in torch's CPU kernels after numpy has measured its float types; True when
    the CPU supports flushing (x86 FTZ/DAZ)."""
    for dtype in (np.float16, np.float32, np.float64, np.longdouble):
        np.finfo(dtype)  # cached by numpy: later calls return these (correct) values
    return bool(torch.set_flush_denormal(True))
