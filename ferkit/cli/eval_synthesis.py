"""`ferkit eval-synthesis (--weights NAME | --checkpoint PATH) --data DIR --judge NAME [--json]`.

FERSNet's Table V metric on unseen faces: every test face is synthesised with every expression,
an independently trained expression classifier (``--judge``: trained on real training faces only,
e.g. a `fersnet/ckplus --no-mtl` or ResNet12 checkpoint of the same fold) labels the results, and
the accuracy against the target expressions is reported; plus the mean identity cosine between
source and synthesised faces (``--identity-weights``, Light CNN or DeepID), with real same-subject
and different-subject pairs for scale.

Test faces: ``--data`` is a CK+48 folder (fold ``--fold`` of ``--folds`` subject-independent
folds, split seed ``--split-seed``: use the fold the weights were NOT trained on; ``--folds 0``
takes every image) or a FER+ folder (its FER2013Valid split); or ``--photos IMAGE...``: every face
the live face pipeline finds in those photos, cut in the generator's crop style as the app and
``ferkit synthesize`` cut them. Photos have no expression labels and no subject ids, so the report
has the judged synthesis accuracy and the identity cosine source vs synthesised only. The judge
may be any shipped expression model (e.g. ``netb-dal-mse`` on FER2013): classes are matched by
name and a generator class the judge lacks (contempt) is left out of the accuracy.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ferkit.cli.options import add_batch_threads, add_model_source, add_verbose, device_arg, run_quietly, use_batch_threads
from ferkit.errors import NotFoundError, UsageError
from ferkit.utils.argtypes import non_negative_int, positive_int


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("eval-synthesis", help="score synthesised faces (Table V accuracy, identity cosine)",
                              description="Expression accuracy of a judge classifier on faces synthesised from "
                                          "unseen test faces, and identity similarity to the source faces.")
    add_model_source(p, weights_help="shipped FERSNet weights", checkpoint_help="a FERSNet training checkpoint")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="CK+48 folder or FER+ folder")
    src.add_argument("--photos", type=Path, nargs="+", metavar="IMAGE",
                     help="photos: every detected face is synthesised with every expression")
    p.add_argument("--folds", type=non_negative_int, default=10, help="CK+48 subject-independent folds (0: all images)")
    p.add_argument("--fold", type=non_negative_int, default=0, help="CK+48 held-out fold to synthesise from")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the subject split")
    p.add_argument("--judge", default=None, metavar="NAME_OR_CHECKPOINT",
                   help="independently trained expression classifier (without it: identity numbers only)")
    p.add_argument("--identity-weights", default=None, metavar="NAME_OR_CHECKPOINT",
                   help="identity net (Light CNN / DeepID); 'none' skips it; default, read from the shipped "
                        "cards: the calibrated Light CNN (the paper's), else the calibrated identity net best on "
                        "LFW, else any with an identity feature")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--device", default="auto", type=device_arg, help="auto (CUDA when present), cpu or cuda")
    add_batch_threads(p, "the synthesis and judging batches")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_verbose(p)
    p.set_defaults(func=run)


def _test_faces(args: argparse.Namespace, size: int, classes: list[str]):
    """(dataset of unseen faces, description)."""
    data = Path(args.data)
    if not data.exists():
        raise NotFoundError(f"--data {data}: no such folder")
    if (data / "label.csv").is_file() or (data / "FER2013Valid" / "label.csv").is_file():
        from ferkit.data.ferplus import load_ferplus

        folder = data / "FER2013Valid" if (data / "FER2013Valid").is_dir() else data
        ds = load_ferplus(folder, vote="majority", size=size)
        return ds, f"FER+ {folder.name} ({len(ds)} faces, majority vote)"
    from ferkit.data.ckplus import load_ckplus48

    ds = load_ckplus48(data, size=size)
    if args.folds <= 0:
        return ds, f"CK+48 all {len(ds)} faces"
    from ferkit.evaluation.kfold import fold_indices

    _, test_idx = fold_indices(ds.subjects, args.folds, args.fold, args.split_seed)
    return ds.subset(test_idx), (f"CK+48 fold {args.fold} of {args.folds} (split seed {args.split_seed}): "
                                 f"{len(test_idx)} faces")


def _photo_faces(photos: list[Path], pre: Any):
    """uint8 ``[N, C, S, S]`` crops of every face in ``photos`` (the live pipeline, the weights' crop style)."""
    import torch

    from ferkit.inference import crops_to_tensor, faces_in_photos

    per_photo = faces_in_photos(photos, pre, no_face_hint="--photos needs pictures with detectable faces")
    crops = [f.crop for _, faces in per_photo for f in faces]
    names = [f"{photo.name} ({len(faces)})" for photo, faces in per_photo]
    labels = torch.full((len(crops),), -1, dtype=torch.long)  # photos carry no expression label
    return crops_to_tensor(crops), labels, f"photos {', '.join(names)}: {len(crops)} face{'s' * (len(crops) != 1)}"


def run(args: argparse.Namespace) -> int:
    return run_quietly(_run, args)


def _run(args: argparse.Namespace) -> int:
    from ferkit.evaluation.synthesis import FrozenIdentity, Judge, evaluate_synthesis
    from ferkit.models.weights import load_weights

    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise NotFoundError(f"--checkpoint {args.checkpoint}: no such file")
    choice = use_batch_threads(args)
    generator = load_weights(args.checkpoint or args.weights, device=args.device)
    if not getattr(generator.model, "has_synthesis", False):
        raise UsageError(f"weights {generator.weights.name!r} have no synthesis stream")
    pre, classes = generator.weights.preprocessing, list(generator.weights.classes)
    if args.photos:
        images, labels, desc = _photo_faces(list(args.photos), pre)
        subjects = None
    else:
        ds, desc = _test_faces(args, pre.input_size, classes)
        if list(ds.classes) != classes:
            raise UsageError(f"--data classes {ds.classes} differ from the weights' classes {classes}")
        if pre.channels != ds.images.shape[1]:
            raise UsageError(f"--data has {ds.images.shape[1]}-channel images, the weights expect {pre.channels}")
        images, labels, subjects = ds.images, ds.labels, ds.subjects
    judge = Judge(load_weights(args.judge, device=generator.device), classes) if args.judge else None
    identity = FrozenIdentity.from_option(args.identity_weights, device=generator.device)
    report = evaluate_synthesis(generator, images, labels, subjects, judge=judge, identity=identity,
                                batch_size=args.batch_size)
    result = {"weights": generator.weights.name, "source": generator.weights.source, "data": desc,
              **report.metrics, "per_target_accuracy": report.per_target_accuracy, "threads": choice.threads}
    if getattr(generator.model, "has_gates", False):
        from ferkit.evaluation.gates import gate_spread

        result["gate_spread"] = gate_spread(generator.model, images, lambda x: pre.normalize(x.to(generator.device)),
                                            batch_size=args.batch_size)
    print(f"threads: {choice.reason}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['weights']} on {desc}")
    for k, v in result.items():
        if k in {"weights", "source", "data", "per_target_accuracy", "gate_spread"}:
            continue
        print(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")
    if report.per_target_accuracy:
        print("  per target: " + ", ".join(f"{k} {v:.3f}" for k, v in report.per_target_accuracy.items()))
    for key, st in result.get("gate_spread", {}).items():
        print(f"  gate {key}: mean {st['mean']:.3f}, range over the face {st['spatial_range']:.3f}, "
              f"std across faces {st['across_faces_std']:.3f}")
    return 0
