"""ConvFLU gate maps and expression synthesis, turned into pictures.

FERSNet (papers/fersnet_*) exchanges features between its recognition (FER) and synthesis (FES)
streams through ConvFLU units; each has a leaky gate r and a memory gate z per level and
direction, maps in (0, 1). We show one channel of a gate over the aligned face the model saw: the
one the weights card names as the most selective over held-out faces (``gate_channels``), because
single channels open over eyes or mouth and close elsewhere while their mean over channels cancels
to a nearly flat map; the channel mean stays available.

Why a per-map colour range: trained gates sit in a narrow band (about 0.36-0.54 for the shipped
FERSNet), so on a fixed 0..1 scale every map is one flat tint. The panel therefore stretches each
map's colours over its own robust range (or centres them on 0.5, the "half open" point of a
sigmoid gate) and always prints the real values the colours stand for; the fixed 0..1 scale is kept
as an option for comparing gates with each other.

Why a difference view for synthesis: a weakly trained synthesis stream changes the face by a few
grey levels, invisible side by side; |synth - input| on one scale shared by every target shows
where (and how much) each target expression changes the face.

Everything here is Qt-free (numpy / OpenCV), so the panels only paint what these functions return.
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import cv2
import numpy as np

GATE_NAMES = {"r": "leaky gate r", "z": "memory gate z"}
#: FERSNet's direction keys (ferkit.models.fersnet.DIRECTIONS) in words: "x<-y" = into stream x from y
DIRECTION_NAMES = {"fer<-fes": "synthesis → recognition", "fes<-fer": "recognition → synthesis"}
#: FERSNet's two streams (the parts of a direction key) in words
STREAM_NAMES = {"fer": "recognition", "fes": "synthesis"}
#: what each gate measures, in words: {x} the receiving stream, {y} the sending one (ConvFLU eqs. 1-4:
#: r scales the sending stream's features inside the candidate, z mixes the candidate into the receiver)
GATE_MEANINGS = {"r": "how much {y} features flow into {x}",
                 "z": "how much of the {x} features are replaced by what comes from {y}"}
#: (upper bound of a map's real range max - min, word): how much a gate varies over the face
RANGE_WORDS = ((0.05, "nearly flat"), (0.2, "weak"), (0.4, "moderate"), (float("inf"), "strong"))

#: colour-range modes of a gate map: key -> words for the selector
CONTRAST_MODES = {
    "robust": "per map, 2nd–98th percentile",
    "centred": "centred on 0.5, symmetric",
    "fixed": "fixed 0–1 (comparable across maps)",
}
#: a sequential map for ranges, a diverging one when 0.5 (gate half open) is the meaningful middle
CMAP_SEQUENTIAL = "inferno"
CMAP_DIVERGING = "RdBu_r"
CMAP_DIFFERENCE = "magma"


@dataclass(frozen=True)
class GateKey:
    key: str
    gate: str
    direction: str
    level: str

    @property
    def label(self) -> str:
        direction = DIRECTION_NAMES.get(self.direction, self.direction)
        return f"{GATE_NAMES.get(self.gate, self.gate)}, {direction}, level {self.level}"

    def words(self, levels: Optional[int] = None) -> str:
        """Plain words instead of the key: ``r/fer<-fes/1`` -> "how much synthesis features flow into
        recognition, level 1 of 4" (``levels``: how many levels the model has; the key itself never shows)."""
        x, _, y = self.direction.partition("<-")
        meaning = GATE_MEANINGS.get(self.gate)
        if meaning is None or x not in STREAM_NAMES or y not in STREAM_NAMES:
            text = self.label if self.direction else self.key
        else:
            text = meaning.format(x=STREAM_NAMES[x], y=STREAM_NAMES[y])
        if self.level and self.direction:
            text += f", level {self.level}" + (f" of {levels}" if levels else "")
        return text


def range_words(lo: float, hi: float) -> str:
    """How wide a map's real range is, and what that means: ``"range 0.15: weak"``.

    Why: each map's colours are stretched over its own range, so a near-constant map (0.37-0.52)
    looks as structured as a strong one; this says how much the gate really varies over the face.
    """
    width = max(0.0, float(hi) - float(lo))
    word = next(w for bound, w in RANGE_WORDS if width < bound)
    return f"range {width:.2f}: {word}"


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


def colormap_lut(name: str = CMAP_SEQUENTIAL) -> np.ndarray:
    """256x3 uint8 lookup table of a matplotlib colormap (the colour bar uses the same table)."""
    lut = _LUTS.get(name)
    if lut is None:
        from matplotlib import colormaps

        lut = (colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)
        _LUTS[name] = lut
    return lut


def colour_range(heat: np.ndarray, mode: str = "robust", *, low_pct: float = 2.0, high_pct: float = 98.0,
                 min_span: float = 1e-3) -> tuple[float, float]:
    """The values the first and last colour stand for, per :data:`CONTRAST_MODES`.

    ``robust``: the ``low_pct``-``high_pct`` percentiles, so a few extreme pixels cannot flatten the
    rest. ``centred``: 0.5 ± the ``high_pct`` percentile of |value - 0.5|, so "more open than half"
    and "more closed" read as the two sides of a diverging map. ``fixed``: 0..1. A constant map gets
    a span of at least ``min_span`` (no division by zero, and it draws as one mid colour).
    """
    h = np.asarray(heat, dtype=np.float64)
    if mode == "fixed":
        return 0.0, 1.0
    if h.size == 0:
        return 0.0, 1.0
    if mode == "centred":
        half = max(float(np.percentile(np.abs(h - 0.5), high_pct)), min_span / 2)
        return 0.5 - half, 0.5 + half
    if mode != "robust":
        raise ValueError(f"unknown contrast mode {mode!r}; one of {sorted(CONTRAST_MODES)}")
    lo, hi = (float(v) for v in np.percentile(h, [low_pct, high_pct]))
    if hi - lo < min_span:
        mid = (hi + lo) / 2
        lo, hi = mid - min_span / 2, mid + min_span / 2
    return lo, hi


def cmap_for(mode: str) -> str:
    """The colormap that suits a contrast mode (diverging around 0.5 for ``centred``)."""
    return CMAP_DIVERGING if mode == "centred" else CMAP_SEQUENTIAL


def to_unit(heat: np.ndarray, value_range: Optional[tuple[float, float]] = None) -> np.ndarray:
    """Values -> [0, 1] colour positions: ``value_range`` (lo, hi) maps to (0, 1), clipped outside."""
    h = np.asarray(heat, dtype=np.float32)
    if value_range is not None:
        lo, hi = float(value_range[0]), float(value_range[1])
        h = (h - lo) / max(hi - lo, 1e-12)
    return np.clip(h, 0.0, 1.0)


def lut_indices(heat: np.ndarray, value_range: Optional[tuple[float, float]] = None) -> np.ndarray:
    """The colour-table row (0..255) each value is drawn with; what "spans the colour range" means."""
    return (to_unit(heat, value_range) * 255).round().astype(np.uint8)


def _rgb(face: np.ndarray) -> np.ndarray:
    f = np.asarray(face)
    if f.ndim == 3 and f.shape[2] == 1:
        f = f[:, :, 0]
    if f.ndim == 2:
        f = cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_GRAY2RGB)
    return f


def overlay(face: np.ndarray, heat: np.ndarray, alpha: float = 0.55, cmap: str = CMAP_SEQUENTIAL,
            size: Optional[int] = None, value_range: Optional[tuple[float, float]] = None) -> np.ndarray:
    """Heatmap blended over the (gray or RGB) face; both upsampled to ``size``.

    ``heat`` is read on ``value_range`` (default: already in [0, 1]); nearest-neighbour upsampling
    keeps each gate cell a visible square instead of inventing detail the map does not have.
    """
    f = _rgb(face)
    side = size or f.shape[0]
    f = cv2.resize(f, (side, side), interpolation=cv2.INTER_LINEAR)
    h = cv2.resize(np.asarray(heat, dtype=np.float32), (side, side), interpolation=cv2.INTER_NEAREST)
    colours = colormap_lut(cmap)[lut_indices(h, value_range)]
    return np.ascontiguousarray((alpha * colours + (1 - alpha) * f).round().astype(np.uint8))


def render_gate(face: np.ndarray, heat: np.ndarray, mode: str = "robust", *, alpha: float = 0.55,
                size: Optional[int] = None) -> dict[str, Any]:
    """One gate map as a picture plus what its colours mean.

    Returns ``{"rgb": uint8 [S,S,3], "lo", "hi": the values of the first / last colour, "cmap",
    "mode", "indices": uint8 [h,w] colour row per map cell, "min", "mean", "max": real values}``.
    """
    h = np.asarray(heat, dtype=np.float32)
    lo, hi = colour_range(h, mode)
    cmap = cmap_for(mode)
    return {"rgb": overlay(face, h, alpha=alpha, cmap=cmap, size=size, value_range=(lo, hi)),
            "lo": lo, "hi": hi, "cmap": cmap, "mode": mode, "indices": lut_indices(h, (lo, hi)),
            "min": float(h.min()), "mean": float(h.mean()), "max": float(h.max())}


def gate_arrays(gates: Mapping[str, "object"], index: int = 0) -> dict[str, np.ndarray]:
    """Face ``index`` of a ModelOutput's ``gates`` as float32 numpy ``[C, H, W]`` arrays (one copy off the device)."""
    out = {}
    for key, tensor in gates.items():
        t = tensor[index]
        out[key] = t.detach().float().cpu().numpy() if hasattr(t, "detach") else np.asarray(t, dtype=np.float32)
    return out


def gate_maps(arrays: Mapping[str, np.ndarray],
              channels: Optional[Mapping[str, int]] = None) -> dict[str, np.ndarray]:
    """Every gate of one face (the ``[C, H, W]`` arrays of :func:`gate_arrays`) as an ``[H, W]`` map.

    The channel mean by default; with ``channels`` (a card's ``gate_channels``), the named channel
    of each gate that has one (gates without an entry are left out). Both views take the arrays of
    one :func:`gate_arrays` call, so the gates leave the device once.
    """
    out = {}
    for key, arr in arrays.items():
        if channels is None:
            out[key] = gate_map(arr)
        elif key in channels and arr.ndim == 3 and 0 <= channels[key] < arr.shape[0]:
            out[key] = gate_map(arr[channels[key]])
    return out


# ------------------------------------------------------------------------------------- synthesis
def _gray_f32(image: np.ndarray, shape: Optional[tuple[int, int]] = None) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 3:
        a = cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY)
    if shape is not None and a.shape[:2] != shape:
        a = cv2.resize(np.ascontiguousarray(a), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return a.astype(np.float32)


def difference_maps(face: np.ndarray, images: Sequence[np.ndarray]) -> np.ndarray:
    """|synthesised - input| per target, in grey levels (0..255): float32 ``[K, H, W]`` at the face's size.

    Colour faces are compared in gray: the question is where the face changed, not in which channel.
    """
    ref = _gray_f32(face)
    return np.stack([np.abs(_gray_f32(img, ref.shape) - ref) for img in images]) if len(images) else \
        np.zeros((0,) + ref.shape, np.float32)


def difference_scale(diffs: np.ndarray, pct: float = 99.5, floor: float = 1.0) -> float:
    """The grey-level difference drawn with the last colour, shared by every tile of the strip.

    A high percentile instead of the maximum so one saturated pixel does not dim the rest; at least
    ``floor`` grey level so an unchanged face stays dark instead of amplifying rounding noise.
    """
    d = np.asarray(diffs, dtype=np.float32)
    return max(float(np.percentile(d, pct)) if d.size else 0.0, floor)


def difference_overlay(face: np.ndarray, diff: np.ndarray, hi: float, *, alpha: float = 0.8,
                       cmap: str = CMAP_DIFFERENCE) -> np.ndarray:
    """One tile of the difference view: |synth - input| on 0..``hi`` over a faint copy of the input."""
    return overlay(face, diff, alpha=alpha, cmap=cmap, size=np.asarray(diff).shape[0], value_range=(0.0, hi))


# ------------------------------------------------------------------------------------- weights card
_PLACES = ((r"ckplus48", "CK+48"), (r"ckplus", "CK+"), (r"fold(\d+)of(\d+)", r"fold \1 of \2"))


def _words(text: str) -> str:
    for pattern, repl in _PLACES:
        text = re.sub(pattern, repl, text)
    return text.replace("_", " ").strip()


def _weights_names(text: str, names: Sequence[str]) -> str:
    """Shipped weights names written with underscores in a metric key (``netb_dal_mse``) as users
    know them (``netb-dal-mse``); ``names`` longest first, so ``netb_dal_mse`` is not read as ``netb``."""
    for name in names:
        text = text.replace(name.replace("-", "_"), name)
    return text


def synthesis_accuracies(metrics: Mapping[str, Any]) -> list[tuple[str, float]]:
    """The card's measured synthesis accuracies (not the paper's), in card order, with readable labels.

    Keys look like ``<data>_synthesis_accuracy[_<judge>]``; the label is "<judge> on <data>".
    """
    from ferkit.models.weights import list_weights

    names = sorted(list_weights(), key=len, reverse=True)  # one scan of the weights folder per card
    out = []
    for key, value in metrics.items():
        if "synthesis_accuracy" not in key or key.startswith("paper_") or not isinstance(value, (int, float)):
            continue
        data, _, judge = key.partition("synthesis_accuracy")
        label = " on ".join(p for p in (_words(_weights_names(judge, names)), _words(data)) if p)
        out.append((label, float(value)))
    return out


def weights_info(name_or_path: str) -> dict[str, Any]:
    """What the panels say about the FERSNet weights they use, read once from the weights card.

    ``{"name", "source" (card file), "file", "recipe", "data", "epochs", "synthesis_accuracy"
    (last measured value or None), "synthesis_accuracies" [(label, value)], "paper_synthesis_accuracy",
    "chance", "text" (rich text for the panel, values escaped)}``. A missing card still gives a sentence.
    """
    from ferkit.models.weights import get_weights

    try:
        w = get_weights(name_or_path)
    except (KeyError, OSError, ValueError):
        return {"name": str(name_or_path), "source": None, "synthesis_accuracy": None, "synthesis_accuracies": [],
                "paper_synthesis_accuracy": None, "chance": None,
                "text": f"Weights: <b>{html.escape(str(name_or_path))}</b> (no weights card found). "
                        "Synthesis accuracy: not measured."}
    measured = synthesis_accuracies(w.metrics)
    paper = w.metrics.get("paper_ckplus_synthesis_accuracy")
    chance = 1.0 / len(w.classes) if w.classes else None
    source = w.source
    shown_source = str(Path(source).relative_to(Path(source).parents[2])) if source and len(Path(source).parents) > 2 \
        else str(source)
    trained = ", ".join(p for p in (f"recipe {w.recipe}" if w.recipe else "",
                                    f"{w.epochs} epochs" if w.epochs else "", w.data) if p)
    text = f"Weights: <b>{html.escape(w.name)}</b> ({html.escape(shown_source)}" \
        + (f"; {html.escape(trained)}" if trained else "") + "). "
    if measured:
        values = ", ".join(f"<b>{v * 100:.1f} %</b> ({html.escape(label)})" if label else f"<b>{v * 100:.1f} %</b>"
                           for label, v in measured)
        text += f"Synthesis accuracy (a separate judge net recognises the target expression): {values}"
        extra = [f"chance {chance * 100:.1f} %" if chance else "",
                 f"paper's full-size model {float(paper) * 100:.1f} %" if isinstance(paper, (int, float)) else ""]
        extra = [e for e in extra if e]
        text += (f"; {', '.join(extra)}." if extra else ".")
    else:
        text += "Synthesis accuracy: not measured."
    return {"name": w.name, "source": source, "file": w.file, "recipe": w.recipe, "data": w.data,
            "epochs": w.epochs, "synthesis_accuracy": measured[-1][1] if measured else None,
            "synthesis_accuracies": measured,
            "paper_synthesis_accuracy": float(paper) if isinstance(paper, (int, float)) else None,
            "chance": chance, "text": text}
