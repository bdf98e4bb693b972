"""`ferkit predict PATH... [--weights NAME | --checkpoint PATH] [--whole-image] [--json]`.

Finds every face in each image (folders expand to their images), aligns it the way the weights
expect and prints the class probabilities. ``--json`` prints a list with, per image,
``{"path", "faces": [{"box": [x, y, w, h], "scores": {label: p}, "label", ...}]}``; an image
that cannot be read gets ``"error"`` instead of ``"faces"`` (and the exit status is 2).

A video (``.mp4``, ``.mov``...) is analysed frame by frame (:mod:`ferkit.video`): ``--every N``,
``--csv FILE`` (one row per analysed frame and face), ``--json``, ``--plot FILE.png`` (each track's
expression timeline), ``--enrol NAME=IMAGE`` (identity similarity per row); a progress line on
stderr. A damaged or truncated video keeps the rows up to the frame where it broke and exits 3.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ferkit.cli.options import add_model_source, add_verbose, device_arg, run_quietly
from ferkit.errors import NotFoundError, UsageError
from ferkit.utils.argtypes import positive_int


def register(subparsers: Any) -> None:
    from ferkit.training.threads import threads_arg

    p = subparsers.add_parser("predict", help="expression scores of the faces in images",
                              description="Detect faces and print each one's expression scores.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    add_weights_arguments(p)
    p.add_argument("--device", default="auto", type=device_arg, help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--whole-image", action="store_true",
                   help="score each whole image as one face (pictures that already are face crops)")
    p.add_argument("--fallback-whole-image", action="store_true",
                   help="score the whole image when no face is found")
    p.add_argument("--engine", choices=["auto", "torch", "onnx", "onnx-int8"], default="auto",
                   help="auto (default: ONNX Runtime where installed, else torch), torch eager, onnx, or "
                        "onnx-int8 (static int8, calibrated on the shared FER2013Valid crops)")
    p.add_argument("--max-faces", type=positive_int, default=5, help="at most this many faces per image (default 5)")
    p.add_argument("--tta", choices=["none", "flip"], default=None,
                   help="test-time augmentation (default: the weights card's; flip = mean of face and mirror)")
    p.add_argument("--threads", type=threads_arg, default=1, metavar="auto|N",
                   help="intra-op threads of each image's face batch (default 1: a few faces gain nothing from "
                        "more, and on a busy machine more threads spin-wait; measured 258 ms instead of 5 ms "
                        "per face); auto: the cores not busy with other programs")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_verbose(p)
    v = p.add_argument_group("videos (one video file as PATH)")
    v.add_argument("--every", type=positive_int, default=1, metavar="N", help="analyse every N-th frame (default 1)")
    v.add_argument("--detect-every", type=positive_int, default=1, metavar="N",
                   help="run the face detector every N analysed frames and follow faces by optical flow "
                        "between (faster; default 1 = detect on every frame, as for images)")
    v.add_argument("--csv", default=None, metavar="FILE", help="write one row per analysed frame and face")
    v.add_argument("--plot", default=None, metavar="FILE.png", help="draw each track's expression timeline")
    v.add_argument("--enrol", action="append", default=[], metavar="NAME=IMAGE",
                   help="add the identity similarity to the face in IMAGE as a column (repeatable)")
    p.set_defaults(func=run)


def add_weights_arguments(p: argparse.ArgumentParser, default_shipped: bool = True) -> None:
    from ferkit.inference import DEFAULT_WEIGHTS

    add_model_source(p, weights_help=f"shipped weights name{f' (default {DEFAULT_WEIGHTS})' if default_shipped else ''}",
                     checkpoint_help="a training checkpoint (.pt) instead", required=not default_shipped)


def resolve_weights(args: argparse.Namespace) -> str:
    """The weights to load, with a clear message when the default weights are not shipped yet."""
    from ferkit.inference import DEFAULT_WEIGHTS
    from ferkit.models.weights import list_weights
    from ferkit.paths import weights_dir

    if args.checkpoint:
        from pathlib import Path

        if not Path(args.checkpoint).is_file():
            raise NotFoundError(f"--checkpoint {args.checkpoint}: no such file")
        return args.checkpoint
    if args.weights:
        from ferkit.data.classes import is_expression_classifier
        from ferkit.models.weights import get_weights

        if not is_expression_classifier(get_weights(args.weights).classes):
            expression = [n for n in list_weights() if is_expression_classifier(get_weights(n).classes)]
            raise UsageError(f"--weights {args.weights} is not an expression classifier (its classes are not "
                             f"expressions: an identity network's are people); use one of {', '.join(expression)}")
        return args.weights
    if DEFAULT_WEIGHTS not in list_weights():
        shipped = ", ".join(list_weights()) or "none"
        raise NotFoundError(f"the default weights {DEFAULT_WEIGHTS!r} are not shipped in {weights_dir()} yet "
                            f"(shipped: {shipped}); pass --weights NAME or --checkpoint PATH")
    return DEFAULT_WEIGHTS


def run(args: argparse.Namespace) -> int:
    return run_quietly(_run, args)


def _run(args: argparse.Namespace) -> int:
    from ferkit.data.images import ImageReadError, expand_image_paths
    from ferkit.inference import Predictor
    from ferkit.video import is_video

    if args.threads == "auto":
        from ferkit.training.threads import choose_threads

        args.threads = choose_threads("auto").threads
    if any(is_video(p) for p in args.paths):
        if len(args.paths) != 1:
            raise UsageError("give one video at a time (images and folders can be mixed, videos cannot)")
        return run_video(args)
    if args.csv or args.plot or args.enrol or args.every != 1 or args.detect_every != 1:
        raise UsageError("--every, --detect-every, --csv, --plot and --enrol apply to a video; PATH is not one "
                         f"(video endings: {', '.join(sorted(_video_suffixes()))})")
    paths = expand_image_paths(args.paths)
    if len(paths) == 1 and not paths[0].exists():
        raise NotFoundError(f"{paths[0]}: no such file")
    results: list[dict[str, Any]] = []
    failed = 0
    with Predictor(resolve_weights(args), device=args.device, max_faces=args.max_faces,
                   engine=args.engine, tta=args.tta, threads=args.threads) as predictor:
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
                     "faces": [canonical_face(f.to_json()) for f in res.faces]}
            results.append(entry)
            if not args.json:
                print(format_entry(entry, predictor.weights.name))
    if args.json:
        print(json.dumps(results, indent=2))
    return 2 if failed else 0


def canonical_face(face: dict[str, Any]) -> dict[str, Any]:
    """A face's JSON with class names in the one spelling the app, ``eval`` and video CSVs use
    ("happy" from CK+ weights reads "happiness")."""
    from ferkit.data.classes import canonical

    face = dict(face)
    if isinstance(face.get("label"), str):
        face["label"] = canonical(face["label"])
    if isinstance(face.get("scores"), dict):
        face["scores"] = {canonical(k): v for k, v in face["scores"].items()}
    return face


def format_entry(entry: dict[str, Any], weights: str) -> str:
    faces = entry["faces"]
    if not faces:
        return f"{entry['path']}: no face found (try --whole-image if the picture is a face crop)"
    lines = [f"{entry['path']}: {len(faces)} face{'s' if len(faces) > 1 else ''} ({weights}; numbered left to "
             "right, box = x, y, width, height in pixels)"]
    for i, f in enumerate(faces, 1):
        top = sorted(f["scores"].items(), key=lambda kv: -kv[1])[:3]
        lines.append(f"  face {i} box {f['box']}: {f['label']}  "
                     + "  ".join(f"{k} {v:.3f}" for k, v in top))
    return "\n".join(lines)


def _video_suffixes() -> set[str]:
    from ferkit.data.images import VIDEO_SUFFIXES

    return VIDEO_SUFFIXES


def _enrolment(predictor: Any, specs: list[str]) -> dict[str, Any]:
    """``NAME=IMAGE`` -> the identity feature of the (largest) face in IMAGE."""
    enrolled = {}
    for spec in specs:
        name, sep, image = spec.partition("=")
        if not sep or not name or not image:
            raise UsageError(f"--enrol {spec!r}: expected NAME=IMAGE")
        faces = predictor.predict_file(image).faces
        if not faces:
            raise UsageError(f"--enrol {spec}: no face found in {image}")
        face = max(faces, key=lambda f: f.box[2] * f.box[3])
        if face.identity is None:
            raise UsageError(f"--enrol: {predictor.weights.name} has no identity feature; use weights with one "
                             "(tfe-jl, deepid, lightcnn9-identity, eifn)")
        enrolled[name] = face.identity
    return enrolled


def run_video(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ferkit.data.prepared import Progress
    from ferkit.inference import Predictor
    from ferkit.utils.io import atomic_write_text
    from ferkit.video import analyse_video, plot_timeline

    with Predictor(resolve_weights(args), device=args.device, max_faces=args.max_faces,
                   engine=args.engine, tta=args.tta, threads=args.threads) as predictor:
        enrolled = _enrolment(predictor, args.enrol)
        bar = Progress(0, "frames", unit="frames")

        def progress(done: int, total: int) -> None:
            bar.total = max(total, done)  # the container's count is known once the video is open
            bar.update(done, force=done == total)

        try:
            analysis = analyse_video(args.paths[0], predictor, every=args.every, enrolled=enrolled,
                                     progress=progress, whole_image=args.whole_image,
                                     detect_every=args.detect_every)
        finally:
            bar.close()
    if args.csv:
        atomic_write_text(Path(args.csv), analysis.to_csv())
    if args.plot:
        plot_timeline(analysis, args.plot)
    if args.json:
        print(json.dumps(analysis.to_json(), indent=2))
    else:
        tracks: dict[int, list[str]] = {}
        for r in analysis.rows:
            tracks.setdefault(r.track, []).append(r.label)
        print(f"{analysis.path}: {analysis.frames_read} frames at {analysis.fps:.1f} fps, every {analysis.every}; "
              f"{len(analysis.rows)} face rows in {len(tracks)} track(s) ({predictor.weights.name})")
        for tid, labels in sorted(tracks.items()):
            counts = sorted(((labels.count(c), c) for c in set(labels)), reverse=True)
            print(f"  track {tid}: " + ", ".join(f"{c} {n}" for n, c in counts))
        for what, path in (("csv", args.csv), ("plot", args.plot)):
            if path:
                print(f"  {what}: {path}")
    if analysis.problem:
        print(f"ferkit predict: warning: {analysis.problem}", file=sys.stderr)
        return 3
    return 0
