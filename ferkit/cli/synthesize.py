"""`ferkit synthesize IMAGE (--weights NAME | --checkpoint PATH) --target LABEL|all --out PNG`.

Detects the largest face, aligns it the way the weights expect (``Preprocessing.alignment``),
and re-expresses it with FERSNet's synthesis stream. ``--target all`` writes a grid (source, then
one column per expression); one label writes the source and the synthesised face side by side.
A photo without a detectable face is a clear error suggesting ``--whole-image`` (for pictures
that already are face crops).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ferkit.errors import NotFoundError, UsageError

DEFAULT_SYNTHESIS_WEIGHTS = "fersnet"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("synthesize", help="re-express a face with FERSNet (expression synthesis)",
                              description="Detect, align and re-express the largest face of an image.")
    p.add_argument("image", type=Path, metavar="IMAGE", help="photo (or face crop with --whole-image)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--weights", default=None, metavar="NAME",
                   help=f"shipped weights with a synthesis stream (default {DEFAULT_SYNTHESIS_WEIGHTS})")
    g.add_argument("--checkpoint", default=None, metavar="PATH", help="a FERSNet training checkpoint instead")
    p.add_argument("--target", default="all", help="expression label of the weights, or 'all' (default)")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--whole-image", action="store_true", help="use the whole image as the face (no detection)")
    p.add_argument("--scale", type=int, default=3, help="enlarge each face tile this many times (default 3)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ferkit.evaluation.synthesis import synthesis_grid, write_png
    from ferkit.face.pipeline import FacePipeline
    from ferkit.inference import crops_to_tensor, read_image, to_model_input
    from ferkit.models.weights import load_weights

    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise NotFoundError(f"--checkpoint {args.checkpoint}: no such file")
    loaded = load_weights(args.checkpoint or args.weights or DEFAULT_SYNTHESIS_WEIGHTS, device=args.device)
    model, pre, classes = loaded.model, loaded.weights.preprocessing, list(loaded.weights.classes)
    if not getattr(model, "has_synthesis", False):
        raise UsageError(f"weights {loaded.weights.name!r} ({loaded.weights.architecture}) have no synthesis "
                         "stream; use FERSNet weights (e.g. --weights fersnet)")
    if args.target == "all":
        targets = list(range(len(classes)))
    elif args.target in classes:
        targets = [classes.index(args.target)]
    else:
        raise UsageError(f"--target {args.target!r} is not a class of {loaded.weights.name!r}; "
                         f"use one of {', '.join(classes)} or 'all'")
    rgb = read_image(args.image)
    with FacePipeline(max_faces=5) as pipeline:
        faces = pipeline.process(rgb, pre, whole_image=args.whole_image)
    if not faces:
        raise UsageError(f"{args.image}: no face found; pass --whole-image if the picture already is a face crop")
    # the largest face is the subject of the picture
    face = max(faces, key=lambda f: f.face.box[2] * f.face.box[3])
    x = to_model_input(crops_to_tensor([face.crop]), pre).to(loaded.device)
    with torch.no_grad():
        syn = model.synthesize_all(x)[:, targets]  # [1, T, C, H, W]
    grid = synthesis_grid(pre.denormalize(x).cpu(), pre.denormalize(syn).cpu(), [classes[t] for t in targets],
                          scale=max(1, args.scale))
    write_png(args.out, grid)
    box = "whole image" if args.whole_image else f"face box {list(face.face.box)}"
    print(f"{args.out}: {box}, {len(targets)} target expression{'s' if len(targets) > 1 else ''} "
          f"({loaded.weights.name})")
    return 0
