"""The one error type for bad datasets: it always names the file (and line) and what to do.

A bad dataset is the user's to fix, so :class:`DataError` is a :class:`~ferkit.errors.UserError` (the
command line prints it as one line); it stays a ``ValueError`` for callers that catch that.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from ferkit.errors import UserError


class DataError(UserError, ValueError):
    def __init__(self, path: Union[str, Path], problem: str, line: Optional[int] = None, hint: str = ""):
        self.path = Path(path)
        self.line = line
        self.problem = problem
        self.hint = hint
        where = f"{self.path}" + (f", line {line}" if line is not None else "")
        super().__init__(f"{where}: {problem}" + (f" ({hint})" if hint else ""))

    def __reduce__(self):  # type: ignore[override]
        # pickled with the constructor's arguments, not the message: errors raised in a worker
        # process (data preparation, a process pool) must arrive whole in the parent
        return (type(self), (self.path, self.problem, self.line, self.hint))
