"""`ferkit eval-verification (--weights NAME | --checkpoint PATH) --data DIR [--pairs FILE] --json`.

Face verification with the cosine similarity of a model's identity feature (DeepID, Light CNN,
EIFN's identity branch, TFE-JL's DeepID branch): the LFW 10-fold protocol when a pairs file is
given, otherwise balanced pairs drawn with a seed from identity folders (or a Yale / prepared
folder). Reports the 10-fold accuracy (threshold chosen on nine folds), the best threshold on all
pairs and its accuracy, ROC AUC and EER; ``--report DIR`` writes ``verification.json`` and ``roc.png``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("eval-verification", help="face verification accuracy / ROC of an identity feature",
                              description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="shipped weights name or .json card")
    src.add_argument("--checkpoint", type=Path, help="a training checkpoint .pt")
    p.add_argument("--data", required=True, type=Path,
                   help="identity folders (<id>/<images>), a Yale folder, a `ferkit prepare` folder, or the LFW root")
    p.add_argument("--pairs", type=Path, default=None, help="LFW pairs.txt / pairsDevTest.txt (10-fold protocol)")
    p.add_argument("--n-pairs", type=int, default=6000, help="pairs to draw without --pairs (half same; default 6000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the drawn pairs")
    p.add_argument("--folds", type=int, default=10, help="folds of the threshold protocol for drawn pairs")
    p.add_argument("--identities", default=None,
                   help="use only these identities: a,b,c | @file | heldout (the names the weights' notes "
                        "list as held out of training)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--report", type=Path, default=None, help="folder for verification.json and roc.png")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ferkit.evaluation.verification import run_verification

    if args.checkpoint is not None and not args.checkpoint.exists():
        raise FileNotFoundError(f"--checkpoint {args.checkpoint} does not exist")
    if not args.data.exists():
        raise FileNotFoundError(f"--data {args.data} does not exist")
    summary, result = run_verification(str(args.checkpoint or args.weights), args.data, pairs_file=args.pairs,
                                       n_pairs=args.n_pairs, seed=args.seed, identities=args.identities,
                                       device=args.device, n_folds=args.folds)
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
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    from ferkit.cli import main

    sys.exit(main(["eval-verification", *sys.argv[1:]]))
