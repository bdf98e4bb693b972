"""Turn a training checkpoint into a shipped weights entry: ``<name>.pt`` + ``<name>.json`` (+ ``.md``).

The ``.pt`` holds only ``modules["model"]``'s state dict, with floating-point *parameters* in fp16
(half the size; the app and ``load_weights`` upcast on load). Buffers are kept as trained:
BatchNorm running variances can be tiny and fp16 would flush them to zero or lose precision, and
integer buffers (``num_batches_tracked``) must stay integers. After writing, the entry is loaded
back through :func:`ferkit.models.weights.load_weights` and its logits compared with the
checkpoint's fp32 model on a fixed random batch, so a broken export never ships silently.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from ferkit.errors import UsageError
from ferkit.models.weights import Weights, load_weights
from ferkit.paths import weights_dir
from ferkit.training.checkpoint import load_checkpoint
from ferkit.utils.io import atomic_torch_save, atomic_write_text

#: largest accepted |logit difference| after the fp16 round trip, relative to the logits' scale
ROUND_TRIP_RTOL = 1e-2


def half_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fp16 copies of the floating-point parameters; buffers and integer tensors untouched."""
    params = {name for name, _ in model.named_parameters()}
    return {k: (v.half() if k in params and v.is_floating_point() else v).clone() for k, v in state.items()}


def default_card_md(w: Weights) -> str:
    """A factual model card from the entry's metadata (no claims beyond what it records)."""
    p = w.preprocessing
    metrics = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                        for k, v in w.metrics.items()) or "| (none recorded) | |"
    wall = f"{w.wall_time_s:.0f} s" if w.wall_time_s is not None else "not recorded"
    return (f"# {w.name}\n\n"
            f"- architecture: `{w.architecture}` {json.dumps(w.model_cfg) if w.model_cfg else ''}\n"
            f"- classes ({len(w.classes)}): {', '.join(w.classes)}\n"
            f"- input: {p.input_size}x{p.input_size} {'gray' if p.grayscale else 'RGB'}, "
            f"(x/255 - {p.mean}) / {p.std}, alignment `{p.alignment}`\n"
            f"- data: {w.data or 'not recorded'}\n"
            f"- recipe: `{w.recipe or 'not recorded'}`, epochs: {w.epochs}\n"
            f"- hardware: {w.hardware or 'not recorded'}, training wall time: {wall}\n\n"
            f"## Metrics\n\n| metric | value |\n|---|---|\n{metrics}\n\n"
            f"{w.notes}\n")


@torch.no_grad()
def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return model(x).logits.float()


def export_weights(checkpoint_path: Union[str, Path], name: str, out_dir: Union[str, Path, None] = None,
                   metrics: Optional[dict[str, Any]] = None, fp16: bool = True, card_md: Optional[str] = None,
                   notes: Optional[str] = None, keep_training_metrics: bool = True,
                   gate_channels: Optional[dict[str, int]] = None) -> dict[str, Any]:
    """Write ``out_dir/<name>.pt`` and ``<name>.json`` (and ``<name>.md``); return paths + check.

    ``metrics`` (e.g. ``{"fer2013valid_accuracy_majority": 0.843}`` from ``ferkit eval``) are merged
    over the checkpoint's own (``keep_training_metrics=False`` drops those). ``card_md`` is the
    human model card; without it an existing ``<name>.md`` is left alone and a missing one is
    generated from the metadata.
    """
    _check_name(name)
    out = Path(out_dir) if out_dir is not None else weights_dir()
    ckpt = load_checkpoint(Path(checkpoint_path))
    meta = dict(ckpt["weights_meta"])
    meta["name"] = name
    meta["file"] = f"{name}.pt"
    meta["metrics"] = {**(meta.get("metrics") or {} if keep_training_metrics else {}), **(metrics or {})}
    if notes is not None:
        meta["notes"] = notes
    if gate_channels is not None:
        meta["gate_channels"] = dict(gate_channels)
    w = Weights.from_dict(meta)

    model = w.build_model()
    state = ckpt["modules"]["model"]
    model.load_state_dict(state)
    if w.gate_channels:
        _check_gate_channels(model, w.gate_channels)
    return _write_entry(w, model, state, out, fp16, card_md)


@torch.no_grad()
def _check_gate_channels(model: torch.nn.Module, channels: dict[str, int]) -> None:
    """Every ``gate key -> channel`` names a gate this model has and a channel inside it."""
    if not getattr(model, "has_gates", False):
        raise UsageError("--gate-channels: this model has no ConvFLU gates")
    size = int(getattr(model, "input_size", 48))
    was_training = model.training
    model.eval()
    gates = model(torch.zeros(1, int(getattr(model, "in_channels", 1) or 1), size, size), return_gates=True).gates
    model.train(was_training)
    for key, channel in channels.items():
        if key not in gates:
            raise UsageError(f"--gate-channels: the model has no gate {key!r} (it has {sorted(gates)})")
        if not 0 <= int(channel) < gates[key].shape[1]:
            raise UsageError(f"--gate-channels: gate {key!r} has {gates[key].shape[1]} channels, not {channel + 1}")


def _write_entry(w: Weights, model: torch.nn.Module, state: dict[str, torch.Tensor], out: Path, fp16: bool,
                 card_md: Optional[str]) -> dict[str, Any]:
    """Write ``<name>.pt/.json/(.md)`` for a built ``model`` holding ``state``, then prove the round trip."""
    name = w.name
    shipped = half_state_dict(model, state) if fp16 else {k: v.clone() for k, v in state.items()}

    pt_path, json_path, md_path = out / f"{name}.pt", out / f"{name}.json", out / f"{name}.md"
    atomic_torch_save(shipped, pt_path)
    w.save_card(json_path)
    if card_md is not None:
        atomic_write_text(md_path, card_md)
    elif not md_path.exists():
        atomic_write_text(md_path, default_card_md(w))

    # round trip: the shipped entry must give the checkpoint's logits within fp16 tolerance
    p = w.preprocessing
    gen = torch.Generator().manual_seed(0)
    x = p.normalize(torch.randint(0, 256, (4, p.channels, p.input_size, p.input_size), generator=gen,
                                  dtype=torch.uint8))
    ref = _logits(model, x)
    loaded = load_weights(json_path, device="cpu")
    got = _logits(loaded.model, x)
    diff = float((ref - got).abs().max())
    scale = float(ref.abs().max()) + 1.0
    if not diff <= ROUND_TRIP_RTOL * scale:
        raise RuntimeError(f"export check failed for {json_path}: logits differ by {diff:.3g} "
                           f"(allowed {ROUND_TRIP_RTOL * scale:.3g}); the files were written but must not ship")
    return {"pt": str(pt_path), "json": str(json_path), "md": str(md_path), "max_logit_diff": diff,
            "bytes": pt_path.stat().st_size, "metrics": w.metrics}


def _check_name(name: str) -> None:
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise UsageError(f"invalid weights name {name!r}: use a plain file stem like 'tfe-jl'")


def export_ensemble(checkpoint_paths: Sequence[Union[str, Path]], name: str, out_dir: Union[str, Path, None] = None,
                    metrics: Optional[dict[str, Any]] = None, fp16: bool = True, card_md: Optional[str] = None,
                    notes: Optional[str] = None) -> dict[str, Any]:
    """Combine identity-net checkpoints into one shipped ``identity_ensemble`` entry.

    Every member must read the same input (preprocessing), know the same identity classes and use the
    same test-time augmentation, or the combined feature would mean nothing; the error says which
    member differs in what. The members' own validation numbers are not the ensemble's, so the card
    carries only ``metrics`` and no threshold: calibrate it afterwards (``ferkit eval-verification
    --write-card``). The held-out identities are those held out of every member.
    """
    from ferkit.models.ensemble import MIN_MEMBERS

    _check_name(name)
    if len(checkpoint_paths) < MIN_MEMBERS:
        raise UsageError(f"an ensemble needs at least {MIN_MEMBERS} checkpoints, got {len(checkpoint_paths)}")
    out = Path(out_dir) if out_dir is not None else weights_dir()
    ckpts = [load_checkpoint(Path(p)) for p in checkpoint_paths]
    metas = [Weights.from_dict(c["weights_meta"]) for c in ckpts]
    first = metas[0]
    for path, m in zip(checkpoint_paths[1:], metas[1:]):
        for field_name in ("preprocessing", "classes", "tta"):
            if getattr(m, field_name) != getattr(first, field_name):
                raise UsageError(f"{path}: its {field_name} differs from {checkpoint_paths[0]}'s; ensemble members "
                                 "must read the same faces, know the same identities and use the same TTA")
    heldout = [i for i in first.heldout_identities if all(i in m.heldout_identities for m in metas[1:])]
    members = [{"architecture": m.architecture, "model_cfg": dict(m.model_cfg)} for m in metas]
    described = "; ".join(f"{m.recipe} seed {c.get('seed')} {m.epochs} epochs ({Path(p).name} of "
                          f"{Path(p).parent.name})" for p, m, c in zip(checkpoint_paths, metas, ckpts))
    recipes = sorted({m.recipe for m in metas})
    w = Weights(name=name, architecture="identity_ensemble", classes=list(first.classes),
                preprocessing=first.preprocessing, model_cfg={"members": members}, file=f"{name}.pt",
                metrics=dict(metrics or {}), data=first.data, recipe=" + ".join(recipes),
                epochs=first.epochs if len({m.epochs for m in metas}) == 1 else None,
                hardware=" / ".join(sorted({m.hardware for m in metas if m.hardware})),
                wall_time_s=sum(m.wall_time_s or 0.0 for m in metas), precision=first.precision, tta=first.tta,
                training_options={"members": [dict(m.training_options, seed=c.get("seed")) for m, c in
                                              zip(metas, ckpts)]},
                heldout_identities=heldout, split=dict(first.split),
                notes=notes if notes is not None else f"identity ensemble of {len(metas)} nets: {described}")
    model = w.build_model()
    state = {f"members.{i}.{k}": v for i, c in enumerate(ckpts) for k, v in c["modules"]["model"].items()}
    model.load_state_dict(state)
    return _write_entry(w, model, state, out, fp16, card_md)
