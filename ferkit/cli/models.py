"""`ferkit models [--json] [--architectures]`: the shipped weights (or the registered architectures).

``--json`` prints a list of ``{name, architecture, classes, input, weights, metrics, ...}`` per
shipped entry in ``resources/weights`` (the contract other tools and the app rely on).
"""
from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("models", help="list shipped weights (or --architectures)",
                              description="List the shipped weights entries, or the registered architectures.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--architectures", action="store_true", help="list registered architectures instead")
    p.add_argument("--metrics", action="store_true",
                   help="every measured metric of each card, one per line (default: one headline figure)")
    p.set_defaults(func=run)


#: the figure the table shows per card, first present wins: the held-out protocol result a paper
#: reports before any training-time validation figure
HEADLINE_METRICS = ("ckplus48_10fold_accuracy", "ckplus48_10fold_mean_accuracy", "fer2013publictest_accuracy_flip_tta",
                    "fer2013valid_accuracy_majority", "lfw_view2_accuracy", "verification_accuracy_celeba_heldout48",
                    "celeba_heldout30_verification_accuracy", "val_accuracy")


def headline(metrics: dict[str, Any]) -> str:
    """``"<key> <value>"`` of the first :data:`HEADLINE_METRICS` key the card has, or ``"-"``."""
    key = next((k for k in HEADLINE_METRICS if isinstance(metrics.get(k), (int, float))), None)
    return "-" if key is None else f"{key} {float(metrics[key]):.4f}"


def weights_entries() -> list[dict[str, Any]]:
    from dataclasses import asdict
    from pathlib import Path

    from ferkit.models.weights import get_weights, list_weights

    entries = []
    for name in list_weights():
        w = get_weights(name)
        card = Path(w.source) if w.source else None
        pt = card.parent / w.file if card is not None and w.file else None
        md = card.with_suffix(".md") if card is not None else None
        entries.append({
            "name": w.name, "architecture": w.architecture, "classes": list(w.classes),
            "input": {**asdict(w.preprocessing), "channels": w.preprocessing.channels},
            "weights": str(pt) if pt is not None else None,
            "weights_present": bool(pt is not None and pt.is_file()),
            "card": str(md) if md is not None and md.is_file() else None,
            "metrics": dict(w.metrics), "data": w.data, "recipe": w.recipe, "epochs": w.epochs,
            "identity_threshold": w.identity_threshold,
        })
    return entries


def architecture_entries() -> list[dict[str, Any]]:
    from ferkit.models.registry import list_models, model_info

    return [{"name": n, "paper": model_info(n).paper, "description": model_info(n).description}
            for n in list_models()]


def run(args: argparse.Namespace) -> int:
    from ferkit.paths import weights_dir

    if args.architectures:
        entries = architecture_entries()
        if args.json:
            print(json.dumps(entries, indent=2))
        else:
            for e in entries:
                print(f"{e['name']:16s} {e['description']}")
        return 0
    entries = weights_entries()
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        print(f"no weights shipped in {weights_dir()}")
        return 0
    from ferkit.data.classes import is_expression_classifier
    from ferkit.inference import DEFAULT_WEIGHTS
    from ferkit.models.defaults import LIVE_WEIGHTS

    print(f"{'name':20s} {'kind':10s} {'architecture':18s} {'input':10s} {'classes':>7s}  headline metric")
    for e in entries:
        inp = f"{e['input']['input_size']}px {'gray' if e['input']['grayscale'] else 'RGB'}"
        name = e["name"] + (" *" if e["name"] == DEFAULT_WEIGHTS else "")
        kind = "expression" if is_expression_classifier(e["classes"]) else "identity"
        missing = "  (weights file missing!)" if not e["weights_present"] else ""
        print(f"{name:20s} {kind:10s} {e['architecture']:18s} {inp:10s} {len(e['classes']):7d}  "
              f"{headline(e['metrics'])}{missing}")
        if args.metrics:
            for k, v in e["metrics"].items():
                print(f"    {k} {v:.4f}" if isinstance(v, float) else f"    {k} {v}")
    print(f"\n* predict's default (the app's too, or {LIVE_WEIGHTS} on a machine with few cores); --metrics lists "
          "every measured figure; each card (the .md beside the .json) says how it was measured")
    return 0
