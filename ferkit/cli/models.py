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
    p.set_defaults(func=run)


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
    print(f"{'name':18s} {'architecture':24s} {'input':12s} {'classes':>7s}  metrics")
    for e in entries:
        inp = f"{e['input']['input_size']}px {'gray' if e['input']['grayscale'] else 'RGB'}"
        metrics = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in e["metrics"].items())
        missing = "" if e["weights_present"] else "  (weights file missing!)"
        print(f"{e['name']:18s} {e['architecture']:24s} {inp:12s} {len(e['classes']):7d}  {metrics}{missing}")
    return 0
