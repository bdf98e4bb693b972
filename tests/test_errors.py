"""User errors and bugs stay apart: only :class:`ferkit.errors.UserError` becomes a one-line CLI error."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ferkit.cli import main
from ferkit.data.errors import DataError
from ferkit.errors import NotFoundError, UnavailableError, UnknownNameError, UsageError, UserError
from ferkit.data.images import ImageReadError
from ferkit.models.registry import create_model, model_info
from ferkit.models.weights import get_weights
from ferkit.recipes.registry import get_recipe
from ferkit.video import VideoOpenError

ROOT = Path(__file__).resolve().parents[1]


def test_every_user_error_keeps_its_builtin_base() -> None:
    # callers written before ferkit.errors caught the builtin types; they still can
    for cls, builtin in ((UsageError, ValueError), (NotFoundError, FileNotFoundError), (UnknownNameError, KeyError),
                         (UnavailableError, RuntimeError), (DataError, ValueError), (ImageReadError, ValueError),
                         (VideoOpenError, ValueError)):
        assert issubclass(cls, UserError) and issubclass(cls, builtin), cls


@pytest.mark.parametrize("lookup", [get_weights, get_recipe, model_info, create_model])
def test_unknown_names_are_user_errors_with_a_plain_message(lookup) -> None:
    with pytest.raises(UnknownNameError) as err:
        lookup("no-such-name")
    assert isinstance(err.value, KeyError)
    assert str(err.value).startswith(("unknown", "no weights named"))  # not KeyError's quoted repr


def test_user_error_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import ferkit.cli.models as models_cli

    def unknown() -> list:
        raise UnknownNameError("unknown model 'x'; known models: a, b")

    monkeypatch.setattr(models_cli, "architecture_entries", unknown)
    monkeypatch.delenv("FERKIT_DEBUG", raising=False)
    assert main(["models", "--architectures"]) == 2
    assert capsys.readouterr().err == "ferkit models: error: unknown model 'x'; known models: a, b\n"
    monkeypatch.setenv("FERKIT_DEBUG", "1")
    with pytest.raises(UnknownNameError):  # FERKIT_DEBUG shows where a user error came from
        main(["models", "--architectures"])


@pytest.mark.parametrize("exc", [KeyError("fc1.weight"), RuntimeError("a broken invariant"), ValueError("bad shape")])
def test_a_bug_inside_the_code_is_not_a_user_error(exc: Exception, monkeypatch: pytest.MonkeyPatch) -> None:
    import ferkit.cli.models as models_cli

    def broken() -> list:
        raise exc

    monkeypatch.setattr(models_cli, "architecture_entries", broken)
    with pytest.raises(type(exc)):
        main(["models", "--architectures"])


@pytest.mark.parametrize("exc", ["KeyError('fc1.weight')", "RuntimeError('a broken invariant')"])
def test_a_bug_prints_its_traceback(exc: str) -> None:
    script = ("import sys\nimport ferkit.cli.models as m\nfrom ferkit.cli import main\n"
              f"def broken():\n    raise {exc}\n"
              "m.architecture_entries = broken\nsys.exit(main(['models', '--architectures']))\n")
    env = {k: v for k, v in os.environ.items() if k != "FERKIT_DEBUG"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr and "in broken" in proc.stderr
    assert exc.split("(")[0] in proc.stderr.strip().splitlines()[-1]
    assert "ferkit models: error:" not in proc.stderr
