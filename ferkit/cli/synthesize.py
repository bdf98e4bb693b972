"""`ferkit synthesize IMAGE... (--weights NAME | --checkpoint PATH) --target LABEL|all [--all-faces] --out PNG`.

Detects the largest face of each image (every face with ``--all-faces``), aligns it the way the
weights expect (``Preprocessing.alignment``), and re-expresses it with FERSNet's synthesis stream.
One row per face, images in the order given: ``--target all`` writes the source, then one column
per expression; one label writes the source and the synthesised face side by side.
A photo without a detectable face is a clear error suggesting ``--whole-image`` (for pictures
that already are face crops).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ferkit.cli.options import add_model_source, add_verbose, device_arg, run_quietly
from ferkit.errors import NotFoundError, UsageError
from ferkit.utils.argtypes import positive_int

DEFAULT_SYNTHESIS_WEIGHTS = "fersnet"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("synthesize", help="re-express a face with FERSNet (expression synthesis)",
                              description="Detect, align and re-express the largest face of an image.")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="photos or folders of photos (or face crops with --whole-image)")
    add_model_source(p, weights_help=f"shipped weights with a synthesis stream (default {DEFAULT_SYNTHESIS_WEIGHTS})",
                     checkpoint_help="a FERSNet training checkpoint instead", required=False)
    p.add_argument("--target", default="all", help="expression label of the weights, or 'all' (default)")
    p.add_argument("--out", type=Path, required=True, help="picture to write; its suffix picks the format (.png, .jpg, .webp, .bmp)")
    p.add_argument("--whole-image", action="store_true", help="use the whole image as the face (no detection)")
    p.add_argument("--all-faces", action="store_true", help="one row per detected face (default: the largest face)")
    p.add_argument("--scale", type=positive_int, default=3, help="enlarge each face tile this many times (default 3)")
    p.add_argument("--device", default="auto", type=device_arg, help="auto (CUDA when present), cpu or cuda")
    add_verbose(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_quietly(_run, args)


def _run(args: argparse.Namespace) -> int:
    import torch

    from ferkit.evaluation.synthesis import image_suffix, synthesis_grid, write_image
    from ferkit.inference import crops_to_tensor, faces_in_photos, to_model_input
    from ferkit.models.weights import load_weights

    image_suffix(args.out)  # a name without a picture format fails now, not after the synthesis
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise NotFoundError(f"--checkpoint {args.checkpoint}: no such file")
    from ferkit.data.classes import canonical

    loaded = load_weights(args.checkpoint or args.weights or DEFAULT_SYNTHESIS_WEIGHTS, device=args.device)
    # labels in the one spelling the app and the other commands use ("happiness", not CK+'s "happy")
    model, pre, classes = loaded.model, loaded.weights.preprocessing, [canonical(c) for c in loaded.weights.classes]
    if not getattr(model, "has_synthesis", False):
        raise UsageError(f"weights {loaded.weights.name!r} ({loaded.weights.architecture}) have no synthesis "
                         "stream; use FERSNet weights (e.g. --weights fersnet)")
    if args.target == "all":
        targets = list(range(len(classes)))
    elif canonical(args.target) in classes:  # either spelling: happy / happiness
        targets = [classes.index(canonical(args.target))]
    else:
        raise UsageError(f"--target {args.target!r} is not a class of {loaded.weights.name!r}; "
                         f"use one of {', '.join(classes)} or 'all'")
    faces = [f for _, per_photo in faces_in_photos(args.images, pre, all_faces=args.all_faces,
                                                   whole_image=args.whole_image,
                                                   no_face_hint="pass --whole-image if the picture already is a face crop")
             for f in per_photo]
    crops = [f.crop for f in faces]
    where = ["whole image" if args.whole_image else f"face box {list(f.face.box)}" for f in faces]
    x = to_model_input(crops_to_tensor(crops), pre).to(loaded.device)
    with torch.no_grad():
        syn = model.synthesize_all(x)[:, targets]  # [N, T, C, H, W]
    grid = synthesis_grid(pre.denormalize(x).cpu(), pre.denormalize(syn).cpu(), [classes[t] for t in targets],
                          scale=args.scale)
    write_image(args.out, grid)
    print(f"{args.out}: {len(crops)} face{'s' if len(crops) > 1 else ''} ({'; '.join(where)}), {len(targets)} "
          f"target expression{'s' if len(targets) > 1 else ''} ({loaded.weights.name})")
    return 0
