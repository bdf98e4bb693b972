"""`ferkit predict PATH... [--weights NAME | --checkpoint PATH] [--whole-image] [--json]`.

Finds every face in each image (folders expand to their images), aligns it the way the weights
expect and prints the class probabilities. ``--json`` prints a list with, per image,
``{"path", "faces": [{"box": [x, y, w, h], "scores": {label: p}, "label", ...}]}``; an image
that cannot be read gets ``"error"`` instead of ``"faces"`` (and the exit status is 2).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("predict", help="expression scores of the faces in images",
                              description="Detect faces and print each one's expression scores.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    add_weights_arguments(p)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--whole-image", action="store_true",
                   help="score each whole image as one face (pictures that already are face crops)")
    p.add_argument("--fallback-whole-image", action="store_true",
                   help="score the whole image when no face is found")
    p.add_argument("--engine", choices=["torch", "onnx"], default="torch",
                   help="torch eager (default) or ONNX Runtime (faster on CPU)")
    p.add_argument("--max-faces", type=int, default=5, help="at most this many faces per image (default 5)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def add_weights_arguments(p: argparse.ArgumentParser, default_shipped: bool = True) -> None:
    from ferkit.inference import DEFAULT_WEIGHTS

    g = p.add_mutually_exclusive_group(required=not default_shipped)
    g.add_argument("--weights", default=None, metavar="NAME",
                   help=f"shipped weights name{f' (default {DEFAULT_WEIGHTS})' if default_shipped else ''}")
    g.add_argument("--checkpoint", default=None, metavar="PATH", help="a training checkpoint (.pt) instead")


def resolve_weights(args: argparse.Namespace) -> str:
    """The weights to load, with a clear message when the default weights are not shipped yet."""
    from ferkit.inference import DEFAULT_WEIGHTS
    from ferkit.models.weights import list_weights
    from ferkit.paths import weights_dir

    if args.checkpoint:
        from pathlib import Path

        if not Path(args.checkpoint).is_file():
            raise FileNotFoundError(f"--checkpoint {args.checkpoint}: no such file")
        return args.checkpoint
    if args.weights:
        return args.weights
    if DEFAULT_WEIGHTS not in list_weights():
        shipped = ", ".join(list_weights()) or "none"
        raise FileNotFoundError(f"the default weights {DEFAULT_WEIGHTS!r} are not shipped in {weights_dir()} yet "
                                f"(shipped: {shipped}); pass --weights NAME or --checkpoint PATH")
    return DEFAULT_WEIGHTS


def run(args: argparse.Namespace) -> int:
    from ferkit.inference import ImageReadError, Predictor, expand_image_paths

    paths = expand_image_paths(args.paths)
    if len(paths) == 1 and not paths[0].exists():
        raise FileNotFoundError(f"{paths[0]}: no such file")
    results: list[dict[str, Any]] = []
    failed = 0
    with Predictor(resolve_weights(args), device=args.device, max_faces=args.max_faces,
                   engine=args.engine) as predictor:
        for path in paths:
            try:
                res = predictor.predict_file(path, whole_image=args.whole_image,
                                             fallback_whole_image=args.fallback_whole_image)
            except ImageReadError as exc:
                if len(paths) == 1:
                    raise
                failed += 1
                print(f"ferkit predict: error: {exc}", file=sys.stderr)
                results.append({"path": str(path), "error": str(exc)})
                continue
            entry = {"path": str(path), "image_size": list(res.image_size),
                     "faces": [f.to_json() for f in res.faces]}
            results.append(entry)
            if not args.json:
                print(format_entry(entry, predictor.weights.name))
    if args.json:
        print(json.dumps(results, indent=2))
    return 2 if failed else 0


def format_entry(entry: dict[str, Any], weights: str) -> str:
    faces = entry["faces"]
    if not faces:
        return f"{entry['path']}: no face found (try --whole-image if the picture is a face crop)"
    lines = [f"{entry['path']}: {len(faces)} face{'s' if len(faces) > 1 else ''} ({weights})"]
    for i, f in enumerate(faces, 1):
        top = sorted(f["scores"].items(), key=lambda kv: -kv[1])[:3]
        lines.append(f"  face {i} box {f['box']}: {f['label']}  "
                     + "  ".join(f"{k} {v:.3f}" for k, v in top))
    return "\n".join(lines)
