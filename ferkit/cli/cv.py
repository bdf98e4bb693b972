"""`ferkit cv RECIPE --data DIR --folds 10 --by subject [--epochs N] [--out DIR] [recipe options]`.

Subject-independent k-fold cross-validation (the CK+ protocol of the papers): every fold is
trained with the engine and its final checkpoint tested on the held-out subjects; the report is
``<out>/cv.json`` + ``confusion.png`` + ``folds.png`` (see :mod:`ferkit.evaluation.cv`).
Re-running the same command resumes: finished folds are reused, a half-trained fold continues.

stdout carries JSON lines (``cv_start``, ``fold_start``, the engine's ``start/step/epoch/end``
events with a ``fold`` field, ``fold_end``, ``cv_end``); people read stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ferkit.cli.options import device_arg
from ferkit.errors import NotFoundError, UsageError
from ferkit.utils.argtypes import fold_count, non_negative_float, positive_int

#: fold options that ``ferkit cv`` sets itself; a recipe's own definitions of them are skipped
_CV_FLAGS = {"--folds", "--fold", "--split-seed", "--epochs", "--threads"}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "cv", help="subject-independent k-fold cross-validation of a recipe",
        description="Cross-validate RECIPE by subject. Options after the name: --data DIR [--folds 10] "
                    "[--by subject] [--epochs N] [--out DIR] [--device auto|cpu|cuda] [--split-seed S] "
                    "[--fold-only I ...] [--threads N] plus the recipe's own options (ferkit cv RECIPE --help). "
                    "A recipe option value holding {fold} or {fold:02d} is formatted per fold, e.g. "
                    "--emotion-checkpoint runs/cv_r12/fold-{fold:02d}/checkpoint.pt (the same fold's stage 2).")
    p.add_argument("recipe", nargs="?", help="a fold-capable recipe, e.g. tfe-jl/resnet12-ckplus")
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


class _SkipExisting:
    """Hands a recipe's ``add_arguments`` a parser that ignores options ``ferkit cv`` owns."""

    def __init__(self, group: Any, parser: argparse.ArgumentParser):
        self._group = group
        self._parser = parser

    def add_argument(self, *flags: str, **kwargs: Any) -> Any:
        if any(f in _CV_FLAGS or f in self._parser._option_string_actions for f in flags):  # noqa: SLF001
            return None
        return self._group.add_argument(*flags, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._group, name)


def cv_parser(recipe_cls: Any) -> tuple[argparse.ArgumentParser, set[str]]:
    from ferkit.training.threads import threads_arg

    parser = argparse.ArgumentParser(prog=f"ferkit cv {recipe_cls.name}", description=recipe_cls.description or None)
    parser.add_argument("--data", required=True, type=Path, help=recipe_cls.data_help or "dataset folder")
    parser.add_argument("--folds", type=fold_count, default=10, help="number of folds (papers: 10)")
    parser.add_argument("--by", choices=["subject"], default="subject",
                        help="split unit: subject (no person in two folds; the only protocol the papers use)")
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder (default runs/cv/<recipe>); one sub-folder per fold")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help=f"epochs per fold (paper: {recipe_cls.default_epochs})")
    parser.add_argument("--device", default="auto", type=device_arg, help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="training seed of every fold")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the subject fold assignment")
    parser.add_argument("--fold-only", type=int, nargs="+", default=None, metavar="I",
                        help="run only these folds (0-based); the report covers the folds finished so far")
    parser.add_argument("--threads", type=threads_arg, default=None, metavar="auto|N",
                        help="torch threads for CPU training (default auto: the free cores, re-checked every "
                             "few seconds; see ferkit train --help)")
    parser.add_argument("--no-amp", dest="amp", action="store_false", help="no mixed precision on CUDA")
    parser.add_argument("--progress-interval", type=non_negative_float, default=5.0,
                        help="seconds between JSON 'step' events (default 5)")
    parser.add_argument("--json", action="store_true", help="print the cv.json summary on stdout at the end")
    before = {a.dest for a in parser._actions}
    group = parser.add_argument_group(f"{recipe_cls.name} options")
    recipe_cls.add_arguments(_SkipExisting(group, parser))
    own = {a.dest for a in parser._actions} - before
    return parser, own


def run(args: argparse.Namespace) -> int:
    from ferkit.evaluation.cv import run_cv
    from ferkit.recipes.registry import get_recipe, list_recipes

    if not args.recipe:
        fold_capable = [n for n in list_recipes() if getattr(get_recipe(n), "supports_folds", False)]
        raise UsageError("name a recipe: ferkit cv RECIPE --data DIR (fold-capable recipes: "
                         f"{', '.join(fold_capable) or 'none'})")
    recipe_cls = get_recipe(args.recipe)
    parser, own = cv_parser(recipe_cls)
    opts = parser.parse_args(args.rest)
    if not opts.data.exists():
        raise NotFoundError(f"--data {opts.data} does not exist")
    out = opts.out or Path("runs") / "cv" / recipe_cls.name.replace("/", "_")
    stdout = sys.stdout

    def emit(event: dict[str, Any]) -> None:
        from ferkit.training.progress import _clean

        stdout.write(json.dumps(_clean(event)) + "\n")
        stdout.flush()

    summary = run_cv(recipe_cls, opts.data, out, folds=opts.folds,
                     options={k: getattr(opts, k) for k in sorted(own)}, epochs=opts.epochs, device=opts.device,
                     seed=opts.seed, split_seed=opts.split_seed, amp=opts.amp,
                     progress_interval=opts.progress_interval, only_folds=opts.fold_only, emit=emit,
                     threads=opts.threads)
    if summary.get("status") == "interrupted":
        return 130
    print(format_table(summary), file=sys.stderr)
    if summary.get("peak_epoch_mean_accuracy") is not None:
        print(f"(best epoch of each fold on its own held-out subjects, the reading of TFE-JL's Fig. 5 and not a "
              f"result: {100 * summary['peak_epoch_mean_accuracy']:.2f}%)", file=sys.stderr)
    if opts.json:
        emit({"event": "summary", **{k: v for k, v in summary.items() if k != "fold_results"}})
    return 0


def format_table(summary: dict[str, Any]) -> str:
    """Markdown table of the per-fold accuracies plus mean ± std (what the README shows)."""
    rows = ["| fold | test images | accuracy |", "|---:|---:|---:|"]
    for r in summary["fold_results"]:
        rows.append(f"| {r['fold']} | {r['n_test']} | {100 * r['accuracy']:.2f}% |")
    rows.append(f"| **mean ± std** | {sum(r['n_test'] for r in summary['fold_results'])} | "
                f"**{100 * summary['mean_accuracy']:.2f}% ± {100 * summary['std_accuracy']:.2f}** |")
    return "\n".join(rows)
