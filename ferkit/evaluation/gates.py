"""How far FERSNet's ConvFLU gates move: the numbers behind "the gates barely open or close".

The app draws each gate as its channel-mean map over the face (``app.core.explain.gate_map``), so
these statistics are taken of that same map, per gate key (``r|z``, direction, level):

* ``mean``: the average gate value (0.5 = half open);
* ``spatial_range``: within one face, the 5th-95th percentile range of the map over positions,
  averaged over faces - how much structure one heatmap can show (a map of range 0.05 is a flat
  colour whatever the colour scale makes of it);
* ``spatial_std``: the same spread as a standard deviation;
* ``across_faces_std``: at each position, the standard deviation of the map over faces, averaged
  over positions - whether the gates react to the face at all or are a fixed pattern.

The channel mean hides most of what the gates do: single channels open over the eyes and close over
the cheeks while others do the opposite, so their mean is nearly flat (measured on the 2026-12-07
``fersnet``: channel-mean range 0.04-0.13, single channels 0.25-0.37 median, up to 0.57). Hence also

* ``selective_channel``: the channel whose map varies most over a face (5th-95th percentile range,
  averaged over faces), with that range as ``selective_channel_range`` and the channel count as
  ``channels``. ``ferkit export-weights --gate-channels`` writes these into the card, and the app's
  Gates panel shows that channel by default: a fixed choice per model, so the map does not jump
  between channels from frame to frame.
"""
from __future__ import annotations

from typing import Callable

import torch

from ferkit.errors import UsageError


@torch.no_grad()
def gate_spread(model: torch.nn.Module, images: torch.Tensor, to_input: Callable[[torch.Tensor], torch.Tensor],
                batch_size: int = 64) -> dict[str, dict[str, float]]:
    """Per gate key, the statistics of the module docstring over the faces ``images`` (uint8 model size)."""
    if not getattr(model, "has_gates", False):
        raise UsageError("this model has no ConvFLU gates (an ablation without them, or another architecture)")
    model.eval()
    maps: dict[str, list[torch.Tensor]] = {}
    channel_ranges: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(images), batch_size):
        out = model(to_input(images[start:start + batch_size]), return_gates=True)
        for key, gate in out.gates.items():
            gate = gate.float().cpu()
            maps.setdefault(key, []).append(gate.mean(dim=1))  # channel mean
            channel_ranges.setdefault(key, []).append(_spatial_range(gate.flatten(2)))  # [N, C]
    stats: dict[str, dict[str, float]] = {}
    for key in sorted(maps):
        m = torch.cat(maps[key])  # [N, H, W]
        flat = m.flatten(1)
        per_channel = torch.cat(channel_ranges[key]).mean(dim=0)  # [C]
        stats[key] = {"mean": float(flat.mean()),
                      "spatial_range": float(_spatial_range(flat).mean()),
                      "spatial_std": float(flat.std(dim=1).mean()) if flat.shape[1] > 1 else 0.0,
                      "across_faces_std": float(m.std(dim=0).mean()) if m.shape[0] > 1 else 0.0,
                      "selective_channel": int(per_channel.argmax()),
                      "selective_channel_range": float(per_channel.max()),
                      "channels": int(per_channel.numel())}
    return stats


def _spatial_range(values: torch.Tensor) -> torch.Tensor:
    """5th-95th percentile range over the last dimension (positions)."""
    q = torch.quantile(values, torch.tensor([0.05, 0.95]), dim=-1)
    return q[1] - q[0]


def gate_channels_from(spread: dict[str, dict[str, float]]) -> dict[str, int]:
    """``{gate key: selective channel}`` from :func:`gate_spread`'s result (what a weights card stores)."""
    return {key: int(s["selective_channel"]) for key, s in spread.items() if "selective_channel" in s}
