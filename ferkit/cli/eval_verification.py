"""`ferkit eval-verification (--weights NAME | --checkpoint PATH) --data DIR [--pairs FILE] --json`.

Face verification with the cosine similarity of a model's identity feature (DeepID, Light CNN,
EIFN's identity branch, TFE-JL's DeepID branch): the LFW 10-fold protocol when a pairs file is
given, otherwise balanced pairs drawn with a seed from identity folders (or a Yale / prepared
folder). Reports the 10-fold accuracy (threshold chosen on nine folds), the best threshold on all
pairs and its accuracy, ROC AUC and EER; ``--report DIR`` writes ``verification.json`` and ``roc.png``.

On Yale A the drawn pairs are *across expressions* by default (two different expression conditions
per pair; ``--no-across-expressions`` for any conditions). ``--align`` cuts every face with the live
face pipeline in the weights' crop style, as the app does, instead of resizing whole frames.
``--far 0.01`` calibrates the threshold at a 1 % false-accept rate (10-fold: calibrated on nine
folds, FAR / true-accept rate measured on the tenth; the shipped threshold is calibrated on all
pairs); ``--write-card CARD.json`` writes the threshold, its FAR / TAR and the accuracy metrics
into that weights card, atomically.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ferkit.cli.options import add_model_source, add_verbose, device_arg, run_quietly
from ferkit.errors import NotFoundError, UsageError
from ferkit.utils.argtypes import fold_count, positive_int, probability_below_one


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("eval-verification", help="face verification accuracy / ROC of an identity feature",
                              description=__doc__.splitlines()[0])
    add_model_source(p, weights_help="shipped weights name or .json card", checkpoint_help="a training checkpoint .pt")
    p.add_argument("--data", required=True, type=Path,
                   help="identity folders (<id>/<images>), a Yale folder, a `ferkit prepare` folder, or the LFW root")
    p.add_argument("--pairs", type=Path, default=None, help="LFW pairs.txt / pairsDevTest.txt (10-fold protocol)")
    p.add_argument("--n-pairs", type=positive_int, default=6000, help="pairs to draw without --pairs (half same; default 6000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the drawn pairs")
    p.add_argument("--folds", type=fold_count, default=10, help="folds of the threshold protocol for drawn pairs")
    p.add_argument("--identities", default=None,
                   help="use only these identities: a,b,c | @file | heldout (the names the weights' notes "
                        "list as held out of training)")
    p.add_argument("--across-expressions", action=argparse.BooleanOptionalAction, default=None,
                   help="Yale A: every pair shows two different expression conditions (happy, normal, sad, "
                        "sleepy, surprised, wink); the default for a Yale folder")
    p.add_argument("--align", action="store_true",
                   help="detect and align every face with the live face pipeline (the weights' crop style) "
                        "instead of resizing whole images; crops are cached")
    p.add_argument("--far", type=probability_below_one, default=None, metavar="RATE",
                   help="calibrate the threshold at this false-accept rate (e.g. 0.01) and report the "
                        "true-accept rate there (10-fold)")
    p.add_argument("--write-card", type=Path, default=None, metavar="CARD.json",
                   help="write the metrics (and with --far the threshold, FAR, TAR and calibration) into "
                        "this weights card")
    p.add_argument("--metric-prefix", default=None,
                   help="card metric names' prefix (default: lfw_view2 for a 10-fold pairs file, "
                        "yale_across_expressions on Yale, else verification_<data folder>)")
    p.add_argument("--device", default="auto", type=device_arg, help="auto, cpu or cuda")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--report", type=Path, default=None, help="folder for verification.json and roc.png")
    add_verbose(p)
    p.set_defaults(func=run)


def metric_prefix(summary: dict, data: Path, pairs: Path | None) -> str:
    """Where the numbers came from, as a card-metric prefix (``lfw_view2_accuracy`` is what
    :func:`ferkit.models.weights.enrolment_identity_weights` ranks identity features by)."""
    if pairs is not None:
        return "lfw_view2" if len(summary["fold_accuracies"]) > 1 else "lfw_view1"
    if summary.get("across_expressions"):
        return "yale_across_expressions"
    name = "".join(c if c.isalnum() else "_" for c in data.name.lower()).strip("_")
    return f"verification_{name or 'data'}"


def calibration_label(summary: dict, data: Path, pairs: Path | None) -> str:
    """``identity_calibration``: which pairs the threshold was set on, e.g. "LFW View 2, 6000 pairs, 10-fold"."""
    folds = len(summary["fold_accuracies"])
    fold_text = f"{folds}-fold" if folds > 1 else "in-sample"
    if pairs is not None:
        view = "LFW View 2" if folds > 1 else "LFW View 1"
        where = view
    elif summary.get("across_expressions"):
        where = "Yale A across expressions"
    else:
        where = f"drawn pairs of {data.name}"
    framing = ", faces aligned by the live pipeline" if summary.get("aligned") else ""
    return f"{where}, {summary['n_pairs']} pairs, {fold_text}{framing}"


def card_updates(summary: dict, data: Path, pairs: Path | None, prefix: str | None = None) -> dict:
    """The card fields and metrics this evaluation sets (threshold fields only with --far)."""
    prefix = prefix or metric_prefix(summary, data, pairs)
    metrics = {f"{prefix}_accuracy": round(summary["accuracy"], 4),
               f"{prefix}_accuracy_std": round(summary["accuracy_std"], 4),
               f"{prefix}_auc": round(summary["auc"], 4), f"{prefix}_eer": round(summary["eer"], 4)}
    fields: dict = {}
    cal = summary.get("far_calibration")
    if cal is not None:
        key = f"{prefix}_tar_at_far{cal['target_far']:g}"
        metrics[key] = round(cal["tar"], 4)
        metrics[f"{prefix}_far_at_far{cal['target_far']:g}"] = round(cal["far"], 4)
        fields = {"identity_threshold": round(cal["threshold"], 4), "identity_far": cal["target_far"],
                  "identity_tar": round(cal["tar"], 4),
                  "identity_calibration": calibration_label(summary, data, pairs)}
    elif summary.get("card_threshold") is not None:
        # no new threshold: how the card's own (e.g. LFW-calibrated) threshold does on these pairs
        ct = summary["card_threshold"]
        metrics[f"{prefix}_tar_at_card_threshold"] = round(ct["tar"], 4)
        metrics[f"{prefix}_far_at_card_threshold"] = round(ct["far"], 4)
    return {"fields": fields, "metrics": metrics}


def write_card(card: Path, updates: dict) -> None:
    """Merge ``updates`` into the JSON weights card at ``card`` (atomic replace, other keys kept)."""
    from ferkit.models.weights import Weights

    if card.suffix != ".json" or not card.is_file():
        raise NotFoundError(f"--write-card {card}: not an existing .json weights card (export the "
                            "checkpoint with `ferkit export-weights` first)")
    Weights.update_card(card, updates["fields"], updates["metrics"])


def run(args: argparse.Namespace) -> int:
    return run_quietly(_run, args)


def _run(args: argparse.Namespace) -> int:
    from ferkit.evaluation.verification import run_verification

    if args.checkpoint is not None and not Path(args.checkpoint).exists():
        raise NotFoundError(f"--checkpoint {args.checkpoint} does not exist")
    if not args.data.exists():
        raise NotFoundError(f"--data {args.data} does not exist")
    summary, result = run_verification(str(args.checkpoint or args.weights), args.data, pairs_file=args.pairs,
                                       n_pairs=args.n_pairs, seed=args.seed, identities=args.identities,
                                       device=args.device, n_folds=args.folds, align=args.align,
                                       across_expressions=args.across_expressions, far=args.far)
    if args.write_card is not None:
        updates = card_updates(summary, args.data, args.pairs, args.metric_prefix)
        write_card(args.write_card, updates)
        summary["card_written"] = {"card": str(args.write_card), **updates}
    if args.report is not None:
        from ferkit.evaluation.plots import save_roc_png
        from ferkit.utils.io import atomic_write_text

        roc = save_roc_png(result.fpr, result.tpr, args.report / "roc.png", auc=result.auc, eer=result.eer,
                           title=f"{summary['weights']}: verification ROC")
        summary["roc_png"] = str(roc)
        atomic_write_text(args.report / "verification.json", json.dumps(summary, indent=2) + "\n")
    print(f"{summary['weights']} on {summary['data']}: {summary['n_pairs']} pairs, accuracy "
          f"{summary['accuracy']:.4f} ± {summary['accuracy_std']:.4f} ({len(summary['fold_accuracies'])}-fold), "
          f"best threshold {summary['threshold']:.4f} (accuracy {summary['best_threshold_accuracy']:.4f}), "
          f"AUC {summary['auc']:.4f}, EER {summary['eer']:.4f}", file=sys.stderr)
    cal = summary.get("far_calibration")
    if cal is not None:
        print(f"threshold {cal['threshold']:.4f} at FAR <= {cal['target_far']:g}: held-out FAR {cal['far']:.4f} "
              f"± {cal['far_std']:.4f}, TAR {cal['tar']:.4f} ± {cal['tar_std']:.4f} ({cal['protocol']})",
              file=sys.stderr)
    if args.write_card is not None:
        print(f"wrote {', '.join(summary['card_written']['fields']) or 'no threshold fields'} and "
              f"{len(summary['card_written']['metrics'])} metrics into {args.write_card}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0
