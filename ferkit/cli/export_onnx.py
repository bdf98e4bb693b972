"""`ferkit export-onnx --weights NAME --out FILE`: a model's recognition path as an ONNX file.

The file takes the normalised input ``[batch, C, H, W]`` (any batch size) and returns ``logits``
(and ``identity`` for identity-capable models); the weights card is embedded as metadata, so
``--engine onnx`` (``Predictor(engine="onnx")``) needs nothing else. Each export is checked against
torch in ONNX Runtime (max abs difference <= 1e-4) and the check is printed. BatchNorm is folded away.

``--int8 --calibration DIR`` writes a statically quantised int8 model instead (ONNX Runtime's
``quantize_static``, activation ranges from ``--calibration-size`` face crops of DIR, e.g.
``ferplus/FER2013Valid``; with ``--all`` the files are named ``NAME.int8.onnx``); measure what it
costs with ``ferkit eval --engine onnx-int8 --calibration DIR``, or at once with ``--validate DATA``,
which scores the float and the int8 model on DATA (a ``ferkit eval`` folder) and records both
accuracies and the drop in the file. Saved as ``resources/weights/NAME.int8.onnx``, the file is
used by the default engine (``auto``) only if it was made from exactly those weights and its
recorded drop is at most 0.5 points.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ferkit.cli.options import add_model_source
from ferkit.errors import NotFoundError, UsageError
from ferkit.utils.argtypes import positive_int


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("export-onnx", help="export a model to ONNX (checked against torch)",
                              description=__doc__.splitlines()[0])
    src = add_model_source(p, weights_help="shipped weights name or .json card (ferkit models lists them)",
                           checkpoint_help="a training checkpoint .pt")
    src.add_argument("--all", action="store_true", help="every shipped weights entry into the --out folder")
    p.add_argument("--out", required=True, type=Path, help="output .onnx file (a folder with --all)")
    p.add_argument("--opset", type=positive_int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--no-identity", action="store_true", help="export logits only, even for identity models")
    p.add_argument("--int8", action="store_true", help="static int8 quantisation (needs --calibration)")
    p.add_argument("--calibration", type=Path, default=None, metavar="DIR",
                   help="face crops (images, searched recursively) whose activations set the int8 ranges")
    p.add_argument("--calibration-size", type=positive_int, default=500, help="crops sampled from DIR (default 500)")
    p.add_argument("--calibration-method", choices=["minmax", "percentile", "entropy"], default="minmax",
                   help="how activation ranges are set from the crops (default minmax)")
    p.add_argument("--validate", type=Path, default=None, metavar="DATA",
                   help="with --int8: score float and int8 on DATA (e.g. ferplus/FER2013Valid) and record the drop")
    p.add_argument("--vote", default="majority", choices=["majority", "plurality"],
                   help="FER+ label rule of --validate (default majority)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ferkit.export.onnx import export_onnx
    from ferkit.models.weights import list_weights

    identity = False if args.no_identity else None
    if args.int8 and (args.calibration is None or not args.calibration.is_dir()):
        raise NotFoundError(f"--int8 needs --calibration DIR with face crops (got {args.calibration})")
    if (args.calibration is not None or args.validate is not None) and not args.int8:
        raise UsageError("--calibration and --validate apply to --int8 only")
    if args.all:
        names = list_weights()
        if not names:
            raise NotFoundError("no shipped weights to export (resources/weights/ is empty)")
        jobs = [(n, args.out / f"{n}.onnx") for n in names]
    else:
        source = str(args.checkpoint) if args.checkpoint else args.weights
        if args.checkpoint and not Path(args.checkpoint).exists():
            raise NotFoundError(f"--checkpoint {args.checkpoint} does not exist")
        out = args.out if args.out.suffix == ".onnx" else args.out.with_suffix(".onnx")
        jobs = [(source, out)]
    results = []
    for source, out in jobs:
        if args.int8 and args.all:
            out = out.with_name(f"{source}.int8.onnx")
        # the int8 model is quantised from a checked fp32 export, written beside it and removed after
        fp32_out = out.with_name(out.stem + ".fp32-tmp.onnx") if args.int8 else out
        r = export_onnx(source, fp32_out, opset=args.opset, identity=identity)
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in r.max_abs_diff.items())
        entry = {"name": r.name, "architecture": r.architecture, "path": str(out), "outputs": r.outputs,
                 "input_shape": r.input_shape, "max_abs_diff": r.max_abs_diff, "size_bytes": r.size_bytes}
        if args.int8:
            from ferkit.export.onnx import calibration_files, calibration_inputs, quantize_int8
            from ferkit.models.weights import get_weights

            from ferkit.export.onnx import weights_digest

            weights = get_weights(source)
            try:
                files = calibration_files(args.calibration, args.calibration_size)
                quantize_int8(fp32_out, out, calibration_inputs(files, weights.preprocessing),
                              method=args.calibration_method, note=f"{len(files)} crops of {args.calibration} (seed 0)",
                              source_digest=weights_digest(weights))
            finally:
                fp32_out.unlink(missing_ok=True)
            if args.validate is not None:
                entry["validation"] = validate_int8(source, out, args.validate, args.vote)
            entry["size_bytes"] = out.stat().st_size
            entry["int8"] = {"calibration": str(args.calibration), "calibration_images": len(files),
                             "method": args.calibration_method}
        kind = ", int8" if args.int8 else ""
        print(f"{r.name} ({r.architecture}) -> {out} [{entry['size_bytes'] / 1e6:.1f} MB{kind}], outputs {r.outputs}, "
              f"input {r.input_shape}; ONNX Runtime vs torch max |diff| (fp32 export): {diffs}", file=sys.stderr)
        results.append(entry)
    if args.json:
        print(json.dumps(results if args.all else results[0], indent=2))
    return 0


def validate_int8(source: str, int8_file: Path, data: Path, vote: str) -> dict[str, Any]:
    """Accuracy of the float ONNX model and of ``int8_file`` on ``data``; recorded in the file."""
    from ferkit.evaluation.evaluate import evaluate
    from ferkit.export.onnx import record_validation

    ref = evaluate(source, data, vote=vote, device="cpu", engine="onnx")
    got = evaluate(source, data, vote=vote, device="cpu", onnx_file=int8_file)
    validation = {"data": str(data), "vote": vote, "n": got["n"], "tta": got["tta"],
                  "float_accuracy": round(ref["accuracy"], 6), "int8_accuracy": round(got["accuracy"], 6),
                  "drop_points": round(100.0 * (ref["accuracy"] - got["accuracy"]), 3)}
    record_validation(int8_file, validation)
    print(f"  validation on {data} ({got['n']} images, tta {got['tta']}): float {ref['accuracy']:.4f}, "
          f"int8 {got['accuracy']:.4f}, drop {validation['drop_points']:.2f} points", file=sys.stderr)
    return validation
