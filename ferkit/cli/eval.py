"""`ferkit eval (--weights NAME | --checkpoint PATH) --data DIR [--json] [--vote ...] [--report DIR]`.

Accuracy of weights on a folder of already-cropped labelled faces (FER+ split, FER2013 with
``--split Training|PublicTest|PrivateTest``, CK+48, or a prepared dataset): ``--json`` prints ``{"accuracy", "n", "per_class", "confusion", "vote_rule",
"data", ...}``; ``--report DIR`` also writes ``confusion.png``, ``per_class.csv`` and ``eval.json``.
"""
from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: Any) -> None:
    from ferkit.cli.predict import add_weights_arguments
    from ferkit.cli.options import add_batch_threads, device_arg

    p = subparsers.add_parser("eval", help="accuracy of weights on a labelled folder of face crops",
                              description="Evaluate weights on a FER+ split folder, CK+48 or a prepared dataset.")
    add_weights_arguments(p, default_shipped=False)
    p.add_argument("--data", required=True, help="FER+ split folder (e.g. ferplus/FER2013Valid), CK+48, or prepared .pt")
    p.add_argument("--vote", default="majority", choices=["majority", "plurality"],
                   help="FER+ label rule (default majority: the FER+ reference code's >50 %% rule)")
    p.add_argument("--split", default=None, choices=["Training", "PublicTest", "PrivateTest"],
                   help="evaluate FER2013's original 7-class labels of this usage (--data: the folder holding "
                        "fer2013.csv or fer2013_emotion.csv)")
    p.add_argument("--tta", default=None, choices=["none", "flip"],
                   help="test-time augmentation (default: the weights card's, the setting its numbers used)")
    p.add_argument("--engine", default="torch", choices=["torch", "onnx", "onnx-int8", "auto"],
                   help="inference engine (default torch, the one the cards were measured with); onnx-int8 "
                        "quantises with --calibration crops first (cached) to measure what int8 costs")
    p.add_argument("--calibration", default=None, metavar="DIR",
                   help="face crops calibrating --engine onnx-int8 (default: shared data ferplus/FER2013Valid)")
    p.add_argument("--onnx", default=None, metavar="FILE",
                   help="score with this exported .onnx file (e.g. from export-onnx --int8) instead of the weights")
    p.add_argument("--heldout-only", action="store_true",
                   help="score only the subjects the weights' card says were held out of training (CK+ fold "
                        "models: their test fold); without it such a run also counts the training subjects and says so")
    p.add_argument("--report", default=None, metavar="DIR", help="write confusion.png, per_class.csv, eval.json here")
    p.add_argument("--device", default="auto", type=device_arg, help="auto (CUDA when present), cpu or cuda")
    add_batch_threads(p, "the evaluation batches")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from ferkit.cli.options import use_batch_threads
    from ferkit.cli.predict import resolve_weights
    from ferkit.evaluation.evaluate import evaluate, format_table

    choice = use_batch_threads(args)
    result = evaluate(resolve_weights(args), args.data, vote=args.vote, device=args.device, report_dir=args.report,
                      split=args.split, tta=args.tta, engine=args.engine, calibration=args.calibration,
                      onnx_file=args.onnx, heldout_only=args.heldout_only)
    result.setdefault("threads", choice.threads)
    print(f"threads: {choice.reason}", file=sys.stderr)  # after the run: an error stays one plain line
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
        if args.report:
            print(f"report: {', '.join(result['report'].values())}")
    return 0
