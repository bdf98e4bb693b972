"""ConvFLU gate maps and expression synthesis, turned into pictures.

FERSNet (papers/fersnet_*) exchanges features between its recognition (FER) and synthesis (FES)
streams through ConvFLU units; each has a leaky gate r and a memory gate z per level and
direction, maps in (0, 1). We show the channel mean of a gate over the aligned face, on a
fixed 0..1 colour scale so gates can be compared with each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import cv2
import numpy as np

GATE_NAMES = {"r": "leaky gate r", "z": "memory gate z"}


@dataclass(frozen=True)
class GateKey:
    key: str
    gate: str
    direction: str
    level: str

    @property
    def label(self) -> str:
        return f"{GATE_NAMES.get(self.gate, self.gate)}, {self.direction}, level {self.level}"


def parse_gate_keys(keys: Sequence[str]) -> list[GateKey]:
    """``"r/fer<-fes/1"`` -> GateKey(gate="r", direction="fer<-fes", level="1"); odd keys kept whole."""
    out = []
    for key in keys:
        parts = key.split("/")
        if len(parts) == 3:
            out.append(GateKey(key, parts[0], parts[1], parts[2]))
        else:
            out.append(GateKey(key, key, "", ""))
    return sorted(out, key=lambda g: (g.gate, g.direction, g.level))


def gate_map(gate: np.ndarray) -> np.ndarray:
    """One face's gate ``[C, H, W]`` (or ``[H, W]``) -> channel-mean map ``[H, W]`` float32 in [0, 1]."""
    g = np.asarray(gate, dtype=np.float32)
    if g.ndim == 3:
        g = g.mean(axis=0)
    if g.ndim != 2:
        raise ValueError(f"a gate map must be [C,H,W] or [H,W], got shape {g.shape}")
    return np.clip(g, 0.0, 1.0)


_LUTS: dict[str, np.ndarray] = {}


def colormap_lut(name: str = "inferno") -> np.ndarray:
    """256x3 uint8 lookup table of a matplotlib colormap (the colour bar uses the same table)."""
    lut = _LUTS.get(name)
    if lut is None:
        from matplotlib import colormaps

        lut = (colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)
        _LUTS[name] = lut
    return lut


def overlay(face: np.ndarray, heat: np.ndarray, alpha: float = 0.55, cmap: str = "inferno",
            size: Optional[int] = None) -> np.ndarray:
    """Heatmap in [0, 1] blended over the (gray or RGB) face; both upsampled to ``size``."""
    f = np.asarray(face)
    if f.ndim == 3 and f.shape[2] == 1:
        f = f[:, :, 0]
    if f.ndim == 2:
        f = cv2.cvtColor(f, cv2.COLOR_GRAY2RGB)
    side = size or f.shape[0]
    f = cv2.resize(f, (side, side), interpolation=cv2.INTER_LINEAR)
    h = cv2.resize(np.asarray(heat, dtype=np.float32), (side, side), interpolation=cv2.INTER_NEAREST)
    colours = colormap_lut(cmap)[np.clip((h * 255).round().astype(np.int32), 0, 255)]
    return np.ascontiguousarray((alpha * colours + (1 - alpha) * f).round().astype(np.uint8))


def gate_maps(gates: Mapping[str, "object"], index: int = 0) -> dict[str, np.ndarray]:
    """Every gate of face ``index`` of a ModelOutput's ``gates`` as an ``[H, W]`` map."""
    out = {}
    for key, tensor in gates.items():
        t = tensor[index]
        arr = t.detach().float().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
        out[key] = gate_map(arr)
    return out
