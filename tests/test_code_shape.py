"""No function in ferkit/ or app/ runs over 80 lines.

Why: a function that long does several jobs (``fold_batch_norms`` held six helpers and three
folding strategies; the self-test, the screenshot script and the training dialog's constructor
each built or checked everything in one body). Split into helpers named after their one job, each
part can be read, tested and changed alone. Counted as ``ast`` does: from the ``def`` line
(decorators excluded) to the last line of the body, nested functions included in their parent.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ferkit", "app")
MAX_LINES = 80


def long_functions(root: Path = ROOT, limit: int = MAX_LINES) -> list[str]:
    """``path:line name (N lines)`` of every function or method in :data:`PACKAGES` longer than ``limit``."""
    found = []
    for package in PACKAGES:
        for f in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"), filename=str(f))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > limit:
                        found.append(f"{f.relative_to(root)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_is_longer_than_80_lines() -> None:
    too_long = long_functions()
    assert not too_long, (f"functions over {MAX_LINES} lines (split them into helpers with one job each):\n  "
                          + "\n  ".join(too_long))


def test_the_check_sees_a_long_function(tmp_path: Path) -> None:
    """The walk finds a long function (and a long method) where it should, and names it."""
    (tmp_path / "app").mkdir()
    (tmp_path / "ferkit").mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "ferkit" / "long.py").write_text(f"def short():\n    pass\n\n\ndef long():\n{body}\n")
    (tmp_path / "app" / "cls.py").write_text("class C:\n    def m(self):\n" + body.replace("    ", "        ") + "\n")
    assert long_functions(tmp_path) == [f"{Path('ferkit', 'long.py')}:5 long ({MAX_LINES + 1} lines)",
                                        f"{Path('app', 'cls.py')}:2 m ({MAX_LINES + 1} lines)"]
