"""Errors the user can fix, apart from everything else.

``ferkit`` raises a :class:`UserError` when the cause lies in what it was given — a path that does
not exist, a data folder in the wrong layout, an unknown model or weights name, an option value out
of range, a machine without the GPU asked for. The command line prints those as one plain line and
exits with status 2; any other exception is a bug in ferkit and keeps its traceback, so a broken
invariant deep inside the code is never mistaken for a typo on the command line.

Each concrete type also derives from the builtin exception that was raised at the same place before
this module existed (``ValueError``, ``FileNotFoundError``, ``KeyError``, ``RuntimeError``), so code
that catches those keeps working.
"""
from __future__ import annotations


class UserError(Exception):
    """Base of every error whose fix lies with the user (their paths, data, names or options)."""


class UsageError(UserError, ValueError):
    """An option value, a combination of options or a file that does not fit what was asked."""


class NotFoundError(UserError, FileNotFoundError):
    """A path the user named (or a file the request needs) does not exist."""


class UnknownNameError(UserError, KeyError):
    """A name that names nothing registered: a model, weights, recipe, dataset or crop style.

    ``KeyError`` quotes its message in ``str()``; this one prints it as written, like the others.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnavailableError(UserError, RuntimeError):
    """What was asked for needs something this machine lacks (a CUDA GPU, an optional package)."""
