"""`ferkit train RECIPE --data DIR --out DIR [...]`: run a paper's recipe on the training engine.

The recipe name comes first because each recipe adds its own options (ablation switches,
lambdas, batch size): the command reads the name, then builds a parser from the engine's options
plus ``Recipe.add_arguments``. ``ferkit train RECIPE --help`` therefore lists that recipe's
options. The same command runs under ``torchrun --nproc_per_node=N -m ferkit train ...``.

Progress goes to stdout as JSON lines (schema: :mod:`ferkit.training.engine`), people read
stderr. Exit status: 0 finished, 2 bad input (data layout, unknown recipe...; one plain line on
stderr), 130 stopped by Ctrl-C / SIGTERM after saving a checkpoint.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ferkit.cli.options import device_arg
from ferkit.errors import NotFoundError, UsageError
from ferkit.utils.argtypes import non_negative_float, positive_float, positive_int

EXIT_INTERRUPTED = 130


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train", help="train a recipe (ferkit train --list shows them)",
        description="Train RECIPE. Options after the name: --data DIR --out DIR [--epochs N] [--resume] "
                    "[--device auto|cpu|cuda] [--seed N] [--precision auto|fp32|bf16|fp16] plus the recipe's own options "
                    "(ferkit train RECIPE --help).")
    p.add_argument("recipe", nargs="?", help="recipe name, e.g. tfe-jl/resnet18-ferplus")
    p.add_argument("--list", action="store_true", help="list the recipes and exit")
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def recipe_parser(recipe_cls: Any) -> tuple[argparse.ArgumentParser, set[str]]:
    """The engine's options plus the recipe's; returns the parser and the recipe's own dests."""
    from ferkit.training.threads import threads_arg

    parser = argparse.ArgumentParser(prog=f"ferkit train {recipe_cls.name}",
                                     description=recipe_cls.description or None)
    parser.add_argument("--data", required=True, type=Path,
                        help=recipe_cls.data_help or "dataset folder the recipe trains on")
    parser.add_argument("--out", required=True, type=Path, help="run folder: checkpoint.pt, best.pt, curves")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help=f"number of epochs (paper: {recipe_cls.default_epochs})")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--device", default="auto", type=device_arg, help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default 0, or the checkpoint's)")
    parser.add_argument("--no-amp", dest="amp", action="store_false", help="same as --precision fp32")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                        help="autocast precision (auto: bf16 on GPUs and on CPUs with avx512_bf16/amx_bf16, "
                             "fp32 elsewhere; weights, optimiser and loss stay fp32)")
    parser.add_argument("--threads", type=threads_arg, default=None, metavar="auto|N",
                        help="torch threads for CPU training (default auto: the cores not busy with other "
                             "programs, re-checked every few seconds while it trains; "
                             "$FERKIT_TRAIN_THREADS sets the default; a fixed N gives bit-identical reruns)")
    parser.add_argument("--time-budget", type=positive_float, default=None, metavar="SECONDS",
                        help="stop before an epoch that would end past this many seconds (checkpoint kept)")
    parser.add_argument("--deterministic", action="store_true",
                        help="deterministic CUDA kernels (slower; CPU runs are deterministic anyway)")
    parser.add_argument("--progress-interval", type=non_negative_float, default=0.5,
                        help="seconds between JSON 'step' events (default 0.5)")
    before = {a.dest for a in parser._actions}
    group = parser.add_argument_group(f"{recipe_cls.name} options")
    recipe_cls.add_arguments(group)
    own = {a.dest for a in parser._actions} - before
    return parser, own


def list_text() -> str:
    from ferkit.recipes.registry import get_recipe, list_recipes

    lines = []
    for name in list_recipes():
        cls = get_recipe(name)
        lines.append(f"{name:40s} {cls.description}")
        if cls.data_help:
            lines.append(f"{'':40s}   --data: {cls.data_help}")
    return "\n".join(lines) if lines else "no recipes registered"


def run(args: argparse.Namespace) -> int:
    from ferkit.training.engine import train
    from ferkit.recipes.registry import get_recipe

    if args.list or (args.rest and "--list" in args.rest):
        print(list_text())
        return 0
    if not args.recipe:
        raise UsageError("name a recipe: ferkit train RECIPE --data DIR --out DIR (ferkit train --list shows them)")
    recipe_cls = get_recipe(args.recipe)
    parser, own = recipe_parser(recipe_cls)
    opts = parser.parse_args(args.rest)
    if not opts.data.exists():
        raise NotFoundError(f"--data {opts.data} does not exist")
    # validate before anything else: a bad layout is a one-line error, not a traceback mid-setup
    recipe_cls.validate_data(opts.data)
    recipe = recipe_cls(opts.data, {k: getattr(opts, k) for k in sorted(own)})
    end = train(recipe, opts.out, epochs=opts.epochs, device=opts.device, resume=opts.resume, seed=opts.seed,
                amp=opts.amp, precision=opts.precision, threads=opts.threads, time_budget_s=opts.time_budget,
                progress_interval=opts.progress_interval, deterministic=opts.deterministic,
                validate=False)
    return EXIT_INTERRUPTED if end["status"] == "interrupted" else 0
