"""The one error type for bad datasets: it always names the file (and line) and what to do."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union


class DataError(ValueError):
    def __init__(self, path: Union[str, Path], problem: str, line: Optional[int] = None, hint: str = ""):
        self.path = Path(path)
        self.line = line
        self.problem = problem
        self.hint = hint
        where = f"{self.path}" + (f", line {line}" if line is not None else "")
        super().__init__(f"{where}: {problem}" + (f" ({hint})" if hint else ""))
