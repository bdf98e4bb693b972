"""Options several commands share, declared once so their spelling and help agree everywhere."""
from __future__ import annotations

import argparse
from typing import Any, Callable


def add_model_source(p: argparse.ArgumentParser, *, weights_help: str, checkpoint_help: str = "a training checkpoint (.pt)",
                     required: bool = True) -> Any:
    """``--weights NAME`` | ``--checkpoint PATH``, one of them; returns the group for a third choice (``--all``)."""
    group = p.add_mutually_exclusive_group(required=required)
    group.add_argument("--weights", default=None, metavar="NAME", help=weights_help)
    group.add_argument("--checkpoint", default=None, metavar="PATH", help=checkpoint_help)
    return group


def device_arg(text: str) -> str:
    """argparse type of every ``--device``: the spelling is checked before anything runs or is written
    (``gpu`` used to reach torch and end in a traceback); whether a GPU is present is checked on use."""
    from ferkit.errors import UsageError
    from ferkit.models.weights import parse_device

    if text != "auto":
        try:
            parse_device(text)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_batch_threads(p: argparse.ArgumentParser, what: str) -> None:
    """``--threads auto|N`` of a command that scores batches (eval, eval-synthesis): auto by default, as training."""
    from ferkit.training.threads import threads_arg

    p.add_argument("--threads", type=threads_arg, default=None, metavar="auto|N",
                   help=f"torch threads of {what} (default auto: the cores not busy with other programs, or "
                        "$FERKIT_TRAIN_THREADS; more threads than free cores make every batch wait for a "
                        "descheduled one)")


def use_batch_threads(args: argparse.Namespace) -> Any:
    """Set torch's thread count from ``--threads``; returns the :class:`~ferkit.training.threads.ThreadChoice`."""
    import torch

    from ferkit.training.threads import choose_threads

    choice = choose_threads(args.threads)
    torch.set_num_threads(choice.threads)
    return choice


def add_verbose(p: argparse.ArgumentParser) -> None:
    """``--verbose``, for the commands that load mediapipe (see :mod:`ferkit.cli.quiet`)."""
    p.add_argument("--verbose", action="store_true",
                   help="keep mediapipe's and TensorFlow Lite's own INFO/WARNING lines on stderr (hidden by default; "
                        "use it when chasing a crash: stderr then goes straight to the terminal)")


def run_quietly(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``run(args)`` with the native libraries' INFO/WARNING lines kept off stderr unless ``--verbose``."""
    from ferkit.cli.quiet import native_stderr_filtered, quiet_native_libraries

    if not args.verbose:
        quiet_native_libraries()  # before mediapipe is imported
    with native_stderr_filtered(not args.verbose):
        return run(args)
