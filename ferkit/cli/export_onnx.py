"""`ferkit export-onnx --weights NAME --out FILE`: a model's recognition path as an ONNX file.

The file takes the normalised input ``[batch, C, H, W]`` (any batch size) and returns ``logits``
(and ``identity`` for identity-capable models); the weights card is embedded as metadata, so
``OnnxClassifier(FILE)`` / ``--engine onnx`` need nothing else. Each export is checked against
torch in ONNX Runtime (max abs difference <= 1e-4) and the check is printed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("export-onnx", help="export a model to ONNX (checked against torch)",
                              description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="shipped weights name or .json card (ferkit models lists them)")
    src.add_argument("--checkpoint", type=Path, help="a training checkpoint .pt")
    src.add_argument("--all", action="store_true", help="every shipped weights entry into the --out folder")
    p.add_argument("--out", required=True, type=Path, help="output .onnx file (a folder with --all)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--no-identity", action="store_true", help="export logits only, even for identity models")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ferkit.export.onnx import export_weights
    from ferkit.models.weights import list_weights

    identity = False if args.no_identity else None
    if args.all:
        names = list_weights()
        if not names:
            raise FileNotFoundError("no shipped weights to export (resources/weights/ is empty)")
        jobs = [(n, args.out / f"{n}.onnx") for n in names]
    else:
        source = str(args.checkpoint) if args.checkpoint else args.weights
        if args.checkpoint and not args.checkpoint.exists():
            raise FileNotFoundError(f"--checkpoint {args.checkpoint} does not exist")
        out = args.out if args.out.suffix == ".onnx" else args.out.with_suffix(".onnx")
        jobs = [(source, out)]
    results = []
    for source, out in jobs:
        r = export_weights(source, out, opset=args.opset, identity=identity)
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in r.max_abs_diff.items())
        print(f"{r.name} ({r.architecture}) -> {r.path} [{r.size_bytes / 1e6:.1f} MB], outputs {r.outputs}, "
              f"input {r.input_shape}; ONNX Runtime vs torch max |diff|: {diffs}", file=sys.stderr)
        results.append({"name": r.name, "architecture": r.architecture, "path": str(r.path), "outputs": r.outputs,
                        "input_shape": r.input_shape, "max_abs_diff": r.max_abs_diff, "size_bytes": r.size_bytes})
    if args.json:
        print(json.dumps(results if args.all else results[0], indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    from ferkit.cli import main

    sys.exit(main(["export-onnx", *sys.argv[1:]]))
