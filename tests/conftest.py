"""Test-wide settings: Qt offscreen, small CPU thread count, and the shared-data skip marker."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from ferkit.paths import shared_data_dir  # noqa: E402

TEST_THREADS = max(1, min(2, os.cpu_count() or 1))
torch.set_num_threads(TEST_THREADS)
# training's default thread count follows the machine's load ("auto"); float reductions depend on
# it, so the suite's runs (in process and in subprocesses) train at one fixed count
os.environ.setdefault("FERKIT_TRAIN_THREADS", str(TEST_THREADS))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` when this checkout has it; the test is skipped otherwise."""
    root = shared_data_dir()
    if not root.is_dir():
        pytest.skip(f"real data not present at {root}")
    return root


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """The app sets torch to one thread (its live-video choice); float reductions then differ from a
    2-thread subprocess, which would make bit-identical resume checks depend on test order."""
    yield
    torch.set_num_threads(TEST_THREADS)


@pytest.fixture(autouse=True)
def _grad_mode_is_left_as_found():
    """A test (or library code it calls) that switches autograd off globally breaks every later
    training test in the session; fail the culprit instead of its victims."""
    yield
    assert torch.is_grad_enabled(), "autograd was left disabled globally (use a scoped no_grad/inference_mode)"
