"""`ferkit export-weights --checkpoint PATH --name NAME [--out DIR] [--metric KEY=VALUE ...]`.

With ``--ensemble`` and several checkpoints of identity nets it writes one ``identity_ensemble``
entry instead (:func:`ferkit.training.export.export_ensemble`).

Writes the shipped triple ``NAME.pt`` (fp16 parameters), ``NAME.json`` (card) and ``NAME.md``
(human card, generated from the metadata unless ``--card FILE`` or an existing one) and checks
that the written entry reproduces the checkpoint's logits (see :mod:`ferkit.training.export`).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional

from ferkit.errors import UsageError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("export-weights", help="turn a training checkpoint into shipped weights",
                              description="Export a checkpoint's model as resources/weights/NAME.{pt,json,md}.")
    p.add_argument("--checkpoint", required=True, type=Path, nargs="+",
                   help="checkpoint.pt or best.pt of a training run (several with --ensemble)")
    p.add_argument("--ensemble", action="store_true",
                   help="combine the identity nets of all --checkpoint files into one identity_ensemble entry "
                        "(same data and preprocessing; calibrate its threshold afterwards)")
    p.add_argument("--name", required=True, help="weights name, e.g. tfe-jl")
    p.add_argument("--out", type=Path, default=None, help="folder (default resources/weights)")
    p.add_argument("--metric", action="append", default=[], metavar="KEY=VALUE",
                   help="a measured number to record, e.g. fer2013valid_accuracy_majority=0.8431 (repeatable)")
    p.add_argument("--eval-json", type=Path, default=None, metavar="FILE",
                   help="output of `ferkit eval --json`: records <data folder>_accuracy_<vote>")
    p.add_argument("--card", type=Path, default=None, metavar="FILE.md", help="human model card to ship")
    p.add_argument("--gate-channels", type=Path, default=None, metavar="EVAL.json",
                   help="ConvFLU models: `ferkit eval-synthesis --json` output whose gate_spread names each "
                        "gate's most selective channel (what the app's Gates panel shows)")
    p.add_argument("--notes", default=None, help="notes for the JSON card")
    p.add_argument("--fp32", action="store_true", help="keep fp32 parameters")
    p.add_argument("--drop-training-metrics", action="store_true",
                   help="record only the metrics given here, not the recipe's val_* numbers")
    p.set_defaults(func=run)


def _parse_metric(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UsageError(f"--metric {text!r}: expected KEY=VALUE")
    try:
        return key, float(value)
    except ValueError:
        return key, value


def metrics_from_eval(path: Path) -> dict[str, Any]:
    result = json.loads(path.read_text())
    stem = Path(result["data"]).name.lower()
    suffix = f"_{result['vote_rule']}" if result.get("vote_rule") else ""
    return {f"{stem}_accuracy{suffix}": result["accuracy"], f"{stem}_n{suffix}": result["n"]}


def _gate_channels(path: Optional[Path]) -> Optional[dict[str, int]]:
    if path is None:
        return None
    from ferkit.evaluation.gates import gate_channels_from

    try:
        spread = json.loads(path.read_text()).get("gate_spread") or {}
    except (OSError, ValueError) as e:
        raise UsageError(f"--gate-channels {path}: cannot read it as JSON ({e})") from e
    channels = gate_channels_from(spread)
    if not channels:
        raise UsageError(f"--gate-channels {path}: no gate_spread with selective_channel in it "
                         "(write it with `ferkit eval-synthesis ... --json` of this version)")
    return channels


def run(args: argparse.Namespace) -> int:
    from ferkit.training.export import export_ensemble, export_weights

    if len(args.checkpoint) > 1 and not args.ensemble:
        raise UsageError(f"{len(args.checkpoint)} checkpoints given: pass --ensemble to combine identity nets, "
                         "or give one checkpoint")
    metrics = dict(_parse_metric(m) for m in args.metric)
    if args.eval_json is not None:
        metrics = {**metrics_from_eval(args.eval_json), **metrics}
    card = args.card.read_text() if args.card is not None else None
    if args.ensemble:
        # an ensemble card never inherits its members' training metrics (they are not its own)
        result = export_ensemble(args.checkpoint, args.name, out_dir=args.out, metrics=metrics, fp16=not args.fp32,
                                 card_md=card, notes=args.notes)
    else:
        result = export_weights(args.checkpoint[0], args.name, out_dir=args.out, metrics=metrics,
                                fp16=not args.fp32, card_md=card, notes=args.notes,
                                keep_training_metrics=not args.drop_training_metrics,
                                gate_channels=_gate_channels(args.gate_channels))
    print(json.dumps(result, indent=2))
    return 0
