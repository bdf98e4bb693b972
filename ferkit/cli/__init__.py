"""`ferkit` command line. Each subcommand lives in its own module exposing ``register(subparsers)``.

Errors the user can fix (bad paths, bad data, unknown names: :class:`ferkit.errors.UserError`) are
printed as one plain line and exit with status 2, as argparse does for a bad command line. Any other
exception is a bug and keeps its traceback, even a ``KeyError`` or ``ValueError``: a one-line message
would hide where it came from. ``FERKIT_DEBUG=1`` shows the traceback of user errors too.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

from ferkit.errors import UserError

# one entry per subcommand module in ferkit/cli/ (add yours here)
COMMAND_MODULES: list[str] = [
    "train",
    "models",
    "predict",
    "eval",
    "export_weights",
    "cv",
    "export_onnx",
    "eval_verification",
    "bench",
    "prepare",
    "synthesize",
    "eval_synthesis",
]


DESCRIPTION = ("Identity-aware facial expression recognition and synthesis: predict, evaluate, train and "
               "cross-validate the four papers' models, synthesise expressions, benchmark. "
               "`ferkit COMMAND --help` says what each command takes.")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ferkit")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferkit", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"ferkit {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"ferkit.cli.{name}").register(sub)
    return parser


def _stdout_closed() -> bool:
    """Whether the reader of stdout has gone: poll reports an error on a pipe whose read end is
    closed (where poll is missing, Windows, a broken pipe is taken to be stdout's, as the Python
    docs' SIGPIPE note does)."""
    import select

    if not hasattr(select, "poll"):
        return True
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):
        return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("ferkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # a pipe of the command's own broke: a bug, keep its traceback
        # the reader went away (`ferkit predict ... | head`): not an error of ours; stdout is
        # pointed at devnull so the interpreter's final flush does not raise a second time
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except UserError as exc:
        if os.environ.get("FERKIT_DEBUG"):
            raise
        print(f"ferkit {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
