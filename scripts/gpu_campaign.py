#!/usr/bin/env python3
"""The GPU campaign: every paper at its own settings, in sequence, inside one lent-GPU call.

Run on the GPU machine from the repo root (its python3 has torch with CUDA; no mediapipe, no Qt)::

    PYTHONPATH=. python3 scripts/gpu_campaign.py --packs packs/all --out "$OUT" [--stages ...]

and first with ``--smoke`` (every stage for two steps; CI runs that on CPU with synthetic packs).
Each stage measures its network's training throughput on the device (a few steps), plans the
epochs that fit its time budget (:func:`ferkit.training.budget.fit_epochs`), trains with the
engine's bf16 autocast (``--precision auto``) and ``time_budget_s`` as a guard, and writes one
file per shipped model into ``--out``: ``<name>.pt`` in checkpoint layout (``weights_meta`` +
fp16 ``modules.model``; ``ferkit export-weights --checkpoint OUT/<name>.pt --name <name>`` ships
it here), int8 and split into <= 16 MiB parts only where fp16 is larger. ``campaign.json`` holds
every stage's metrics, epochs, wall time, img/s and GPU memory; every epoch is also a JSON line on
stdout. The device returns at most 8 files: 7 weights + campaign.json by default.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from ferkit.bench.training import bench_network  # noqa: E402
from ferkit.recipes.registry import get_recipe  # noqa: E402
from ferkit.training.budget import fit_epochs  # noqa: E402
from ferkit.training.engine import train  # noqa: E402
from ferkit.training.recipe import NetSpec  # noqa: E402

MAX_FILE = 16 * 2**20


@dataclass
class Stage:
    """One training run: ``name`` is also the shipped weights name (None: metrics only)."""

    key: str
    recipe: str
    data: str
    budget_s: float
    options: dict[str, Any] = field(default_factory=dict)
    max_epochs: Optional[int] = None
    name: Optional[str] = None
    #: how this run's network differs from the recipe's own (``Recipe.network``), which the throughput
    #: probe measures: NetSpec fields, and ``cfg`` entries merged into the network's configuration
    probe_changes: dict[str, Any] = field(default_factory=dict)

    @property
    def probe(self) -> NetSpec:
        """The recipe's declared network with :attr:`probe_changes`: the configs are not restated here."""
        network = get_recipe(self.recipe).network
        changes = dict(self.probe_changes)
        return replace(network, **{**changes, "cfg": {**network.cfg, **changes.get("cfg", {})}})


#: the papers' settings where time allows (see each recipe's docstring); options may name an
#: earlier stage's checkpoint as "{key}"
STAGES: list[Stage] = [
    Stage("deepid", "tfe-jl/deepid-identity", "identity/celeba_subset", 30,
          {"extra_identity": ["{packs}/identity/orl_faces"]}, max_epochs=200, name="deepid"),
    Stage("resnet18", "tfe-jl/resnet18-ferplus", "ferplus", 75, {"batch_size": 256, "lr": 0.2},
          max_epochs=200, name="resnet18-ferplus"),
    Stage("joint", "tfe-jl/joint-ferplus", "ferplus", 30,
          {"identity_checkpoint": "{deepid}", "emotion_checkpoint": "{resnet18}"}, max_epochs=100, name="tfe-jl"),
    Stage("lightcnn", "netb/lightcnn-identity", "identity", 45,
          {"input_size": 128, "width": 1.0}, max_epochs=80, name="lightcnn9-identity-128",
          probe_changes={"cfg": {"num_classes": 300, "input_size": 128}}),
    Stage("netb", "netb/fer2013", "ferplus", 75,
          {"identity_checkpoint": "{lightcnn}", "lr": 0.05}, max_epochs=60, name="netb-dal-mse-128",
          probe_changes={"cfg": {"input_size": 128}}),
    Stage("eifn", "eifn/ckplus", "ckplus48", 75,
          {"width": 1.0, "batch_norm": True, "lr": 0.01, "classifier_lr_mult": 20, "fold": 0}, max_epochs=100,
          name="eifn-full", probe_changes={"cfg": {"num_subjects": 106}}),
    Stage("fersnet", "fersnet/ckplus", "ckplus48", 120,
          {"arch": "fersnet", "fold": 0}, max_epochs=300, name="fersnet-paper",
          probe_changes={"architecture": "fersnet"}),
    Stage("eifn_efn", "eifn/ckplus", "ckplus48", 40,
          {"width": 1.0, "batch_norm": True, "lr": 0.01, "classifier_lr_mult": 20, "fold": 0, "mode": "efn"},
          max_epochs=100, probe_changes={"cfg": {"num_subjects": 106}}),
]


def _resolve(value: Any, done: dict[str, Path], packs: Path) -> Any:
    if isinstance(value, list):
        return [_resolve(v, done, packs) for v in value]
    if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
        key = value[1:-1]
        if key == "packs":
            return str(packs)
        if key not in done:
            raise RuntimeError(f"this stage needs stage {key!r} first (in the same call, or its file from an "
                               "earlier call with --previous DIR)")
        return str(done[key])
    if isinstance(value, str) and "{packs}" in value:
        return value.replace("{packs}", str(packs))
    return value


def _train_images(recipe: Any) -> int:
    split = recipe._load_split()  # noqa: SLF001 - the data door every recipe has
    return len(split[0])


def _gpu() -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"device": "cpu", "threads": torch.get_num_threads()}
    return {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "cuda": torch.version.cuda, "bf16": torch.cuda.is_bf16_supported()}


def export_compact(checkpoint: Path, name: str, out: Path, max_file: int = MAX_FILE) -> list[str]:
    """``out/<name>.pt``: checkpoint layout with fp16 weights; int8 (+ per-tensor scales) in parts of
    at most ``max_file`` bytes only when fp16 is larger (``--merge`` turns them back into one
    fp16 file here). Returns the files written."""
    from ferkit.training.checkpoint import load_checkpoint
    from ferkit.utils.io import atomic_torch_save

    ckpt = load_checkpoint(checkpoint)
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in ckpt["modules"]["model"].items()}
    blob = {"weights_meta": ckpt["weights_meta"], "modules": {"model": state}}
    path = out / f"{name}.pt"
    atomic_torch_save(blob, path)
    if path.stat().st_size <= max_file:
        return [path.name]
    path.unlink()
    q, scales = {}, {}
    for k, v in state.items():
        if v.is_floating_point() and v.numel() > 1024:
            s = v.float().abs().max().clamp_min(1e-12) / 127.0
            q[k], scales[k] = torch.round(v.float() / s).to(torch.int8), s
        else:
            q[k] = v
    parts, current, size, files = [], {}, 0, []
    for k, v in q.items():
        nbytes = v.numel() * v.element_size() + 1024  # + torch.save's per-tensor record overhead
        if current and size + nbytes > max_file * 0.8:
            parts.append(current)
            current, size = {}, 0
        current[k] = v
        size += nbytes
    parts.append(current)
    for i, part in enumerate(parts):
        p = out / f"{name}.int8-{i + 1}of{len(parts)}.pt"
        atomic_torch_save({"weights_meta": ckpt["weights_meta"] if i == 0 else None, "int8": part,
                           "scales": {k: scales[k] for k in part if k in scales}}, p)
        files.append(p.name)
    return files


def merge_parts(first: Path) -> Path:
    """``NAME.int8-1ofK.pt`` (+ its siblings) -> ``NAME.pt`` beside them, fp16, checkpoint layout."""
    import re

    from ferkit.utils.io import atomic_torch_save

    m = re.fullmatch(r"(.+)\.int8-1of(\d+)\.pt", first.name)
    if not m:
        raise ValueError(f"{first}: expected the first part, NAME.int8-1ofK.pt")
    name, k = m.group(1), int(m.group(2))
    meta, state = None, {}
    for i in range(1, k + 1):
        part = torch.load(first.parent / f"{name}.int8-{i}of{k}.pt", map_location="cpu", weights_only=False)
        meta = meta or part["weights_meta"]
        for key, v in part["int8"].items():
            state[key] = (v.float() * part["scales"][key]).half() if key in part["scales"] else v
    path = first.parent / f"{name}.pt"
    atomic_torch_save({"weights_meta": meta, "modules": {"model": state}}, path)
    return path


def run_stage(stage: Stage, packs: Path, out: Path, runs: Path, device: str, smoke: bool,
              done: dict[str, Path]) -> dict[str, Any]:
    cls = get_recipe(stage.recipe)
    data = packs / stage.data
    options = {k: _resolve(v, done, packs) for k, v in stage.options.items()}
    if stage.recipe == "netb/fer2013" and not (packs / "ferplus" / "FER2013Valid" / "pack.json").is_file():
        options["val_usage"] = "none"  # a FER+ train-only pack: PublicTest is evaluated here afterwards
    if smoke:
        options.update({"max_steps_per_epoch": 2, "batch_size": 8})
        for key in ("input_size",):
            options.pop(key, None)
        if stage.recipe.startswith("netb/"):
            options.update({"input_size": 32, "width": 0.25} if stage.key == "lightcnn" else {})
        if stage.recipe.startswith("eifn/"):
            options.update({"width": 1 / 16, "id_dim": 8, "folds": 4})
        if stage.recipe.startswith("fersnet/"):
            options.update({"arch": "fersnet_light", "width": 4, "input_size": 32, "folds": 4, "lambda_gan": 0.3})
    recipe = cls(data, options)
    t0 = time.monotonic()
    if smoke:
        epochs, img_per_s = 1, None
    else:
        probe = bench_network(stage.probe, torch.device(device if device != "auto" else
                                                        ("cuda" if torch.cuda.is_available() else "cpu")))
        img_per_s = probe["img_per_s_bf16"]["median"] or probe["img_per_s"]["median"]
        epochs = fit_epochs(stage.budget_s, _train_images(recipe), img_per_s, max_epochs=stage.max_epochs)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    epochs_log: list[dict[str, Any]] = []

    def on_event(ev: dict[str, Any]) -> None:
        if ev.get("event") != "epoch":
            return
        row = {"stage": stage.key, "epoch": ev["epoch"], "epochs": ev["epochs"], "img_per_s": ev["images_per_s"],
               "epoch_time_s": ev["epoch_time_s"], "loss": ev["loss"], "val": ev["val"],
               "gpu_mem_gib": (torch.cuda.max_memory_allocated() / 2**30) if torch.cuda.is_available() else None}
        epochs_log.append(row)
        print(json.dumps(row), flush=True)

    run_dir = runs / stage.key
    end = train(recipe, run_dir, epochs=epochs, device=device, json_lines=False, on_event=on_event,
                time_budget_s=None if smoke else stage.budget_s, progress_interval=30.0)
    done[stage.key] = run_dir / "checkpoint.pt"
    files = export_compact(run_dir / "checkpoint.pt", stage.name, out) if stage.name else []
    summary = {"stage": stage.key, "recipe": stage.recipe, "status": end["status"], "epochs": end["epoch"],
               "planned_epochs": epochs, "probe_img_per_s": img_per_s, "wall_time_s": round(time.monotonic() - t0, 1),
               "metrics": end["metrics"], "files": files, "options": {k: v for k, v in options.items()
                                                                     if isinstance(v, (str, int, float, bool))},
               "img_per_s": [r["img_per_s"] for r in epochs_log][-1:] or None,
               "gpu_mem_gib": max((r["gpu_mem_gib"] or 0 for r in epochs_log), default=None)}
    print(json.dumps({"stage_done": summary}), flush=True)
    return summary


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--packs", type=Path, default=Path("packs/all"), help="pack root (scripts/pack_training_data.py)")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "campaign-out")), help="files to bring back")
    p.add_argument("--runs", type=Path, default=None, help="run folders (default: a temporary folder)")
    p.add_argument("--stages", nargs="+", default=None, help=f"subset, in order (default all: "
                                                              f"{' '.join(s.key for s in STAGES)})")
    p.add_argument("--device", default="auto")
    p.add_argument("--smoke", action="store_true", help="every stage for two steps (CI, and first on the GPU)")
    p.add_argument("--merge", type=Path, nargs="+", default=None, metavar="PART",
                   help="turn NAME.int8-1ofK.pt parts brought back into NAME.pt (run here, not on the GPU)")
    p.add_argument("--previous", type=Path, default=None,
                   help="the --out of an earlier call: its <name>.pt files stand in for stages not run now")
    args = p.parse_args(argv)
    if args.merge:
        for first in args.merge:
            print(merge_parts(first))
        return 0
    import tempfile

    runs = args.runs or Path(tempfile.mkdtemp(prefix="ferkit-campaign-"))
    args.out.mkdir(parents=True, exist_ok=True)
    chosen = [s for s in STAGES if args.stages is None or s.key in args.stages]
    unknown = set(args.stages or []) - {s.key for s in STAGES}
    if unknown:
        print(f"campaign: unknown stage(s) {sorted(unknown)}", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"hardware": _gpu(), "smoke": args.smoke, "stages": []}
    done: dict[str, Path] = {}
    if args.previous is not None:  # e.g. call B's joint stage uses call A's deepid
        for stage in STAGES:
            if stage.name and (args.previous / f"{stage.name}.pt").is_file():
                done[stage.key] = args.previous / f"{stage.name}.pt"
    t0 = time.monotonic()
    status = 0
    for stage in chosen:
        try:
            report["stages"].append(run_stage(stage, args.packs, args.out, runs, args.device, args.smoke, done))
        except Exception as exc:  # noqa: BLE001 - one failed stage must not lose the others' results
            status = 1
            report["stages"].append({"stage": stage.key, "error": f"{type(exc).__name__}: {exc}"})
            print(json.dumps({"stage_failed": stage.key, "error": str(exc)}), flush=True)
        report["wall_time_s"] = round(time.monotonic() - t0, 1)
        (args.out / "campaign.json").write_text(json.dumps(report, indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
