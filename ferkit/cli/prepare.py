"""`ferkit prepare DATASET SRC DST`: detect, align and crop every image of a dataset into DST.

Uses the face pipeline of live inference (mediapipe detection + face mesh, eye alignment to the
crop style of the model's preprocessing) and writes the chunked, resumable format documented in
:mod:`ferkit.data.prepared`; recipes read it back with ``ferkit.data.prepared.load_prepared``.
Rerunning an interrupted command resumes at the first missing chunk. The summary (found /
whole image / no face / unreadable) goes to stdout (``--json`` for machines), the bar to stderr.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ferkit.cli.options import add_verbose, run_quietly
from ferkit.utils.argtypes import positive_int

#: dataset options the CLI knows; each dataset takes the subset listed in its registry entry
_DATASET_OPTIONS = {
    "vote": "FER+ vote rule: majority (papers) or plurality",
    "split": "ferplus: train/valid/test child folder; sfew: Train or Val",
    "usage": "fer2013: Training, PublicTest or PrivateTest",
    "protocol": "ckplus: last3 (7 classes) or last3+neutral (8 classes)",
    "variant": "oulu: OriginalImg or Aligned",
    "spectrum": "oulu: VL or NI",
    "light": "oulu: Strong, Weak or Dark",
    "label": "yale: subject or condition",
    "min_images": "identity/lfw: drop identities with fewer images",
}


def register(subparsers: Any) -> None:
    from ferkit.data.registry import list_datasets

    p = subparsers.add_parser("prepare", help="detect, align and crop a dataset into a training cache",
                              description=__doc__.splitlines()[0])
    p.add_argument("dataset", choices=list_datasets(), metavar="DATASET",
                   help=f"one of: {', '.join(list_datasets())}")
    p.add_argument("src", type=Path, help="the dataset as distributed")
    p.add_argument("dst", type=Path, help="output folder (created; rerun to resume)")
    p.add_argument("--weights", default=None,
                   help="take size / gray / crop style from these weights' preprocessing")
    p.add_argument("--size", type=positive_int, default=None, help="crop side in pixels (default 48)")
    color = p.add_mutually_exclusive_group()
    color.add_argument("--rgb", dest="grayscale", action="store_false", default=None, help="3-channel crops")
    color.add_argument("--gray", dest="grayscale", action="store_true", help="1-channel crops (default)")
    p.add_argument("--alignment", default=None, help="crop style (default: the one matching DATASET)")
    p.add_argument("--detect", choices=["yes", "no"], default="yes",
                   help="no = use each whole image, resized (for data already cropped and aligned)")
    p.add_argument("--on-no-face", choices=["whole", "drop"], default=None,
                   help="images without a face: keep the whole image or drop it "
                        "(default: whole for cropped datasets, drop for full frames)")
    p.add_argument("--chunk-size", type=positive_int, default=256)
    p.add_argument("--overwrite", action="store_true", help="replace a different preparation in DST")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    for name, help_text in _DATASET_OPTIONS.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None,
                       type=int if name == "min_images" else str, help=help_text)
    add_verbose(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_quietly(_run, args)


def _run(args: argparse.Namespace) -> int:
    from ferkit.data.prepared import prepare_dataset
    from ferkit.data.registry import get_dataset, open_index
    from ferkit.face.align import get_crop_style
    from ferkit.models.weights import Preprocessing

    spec = get_dataset(args.dataset)
    options = {k: getattr(args, k) for k in _DATASET_OPTIONS if getattr(args, k) is not None}
    base = Preprocessing(alignment=spec.alignment)
    if args.weights:
        from ferkit.models.weights import get_weights

        base = get_weights(args.weights).preprocessing
    pre = Preprocessing(input_size=args.size or base.input_size,
                        grayscale=base.grayscale if args.grayscale is None else args.grayscale,
                        mean=base.mean, std=base.std, alignment=args.alignment or base.alignment)
    get_crop_style(pre.alignment)  # unknown style -> clear KeyError before any work
    index = open_index(args.dataset, args.src, **options)
    summary = prepare_dataset(index, args.dst, pre, source=str(args.src.resolve()), options=options,
                              detect=args.detect == "yes", on_no_face=args.on_no_face,
                              chunk_size=args.chunk_size, progress=not args.quiet, overwrite=args.overwrite)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{args.dataset}: {summary['total']} images -> {summary['kept']} kept in {args.dst} "
              f"(face found {summary['found']}, whole image {summary['whole_image']}, "
              f"no face {summary['no_face']}, unreadable {summary['unreadable']})")
        for key in ("unreadable_files", "no_face_files"):
            files = summary[key]
            if files:
                shown = ", ".join(files[:5]) + (f" ... (+{len(files) - 5}, see {args.dst}/summary.json)"
                                                if len(files) > 5 else "")
                print(f"  {key.replace('_files', '').replace('_', ' ')}: {shown}")
    return 0
