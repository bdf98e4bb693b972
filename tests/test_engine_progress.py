"""The engine's progress numbers are the truth the app shows: step counts of shortened epochs, one
ETA for step and epoch events, and a job log free of numpy's "smallest subnormal" warning."""
from __future__ import annotations

import argparse
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from ferkit.training.engine import train
from ferkit.utils.denormals import SUBNORMAL_WARNING, flush_denormals
from ferkit.training.recipe import StepResult, TrainContext
from tests.engine_support import RECIPE_NAME, TinyRecipe
from tests.fixtures.datasets import make_ferplus_tree

REPO = Path(__file__).resolve().parent.parent


class CappedRecipe(TinyRecipe):
    """The tiny recipe with the paper recipes' ``--max-steps-per-epoch`` (stops before the batches end)."""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--max-steps-per-epoch", type=int, default=None)

    def train_epoch(self, ctx: TrainContext, epoch: int) -> Iterator[StepResult]:
        cap = self.options.get("max_steps_per_epoch")
        for step, result in enumerate(super().train_epoch(ctx, epoch)):
            if cap is not None and step >= cap:
                break
            yield result


@pytest.fixture(scope="module")
def fer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ferplus") / "FER2013Train"
    make_ferplus_tree(root, n=120)  # majority vote keeps 60 images: 7 batches of 8
    return root


def test_steps_of_a_shortened_epoch_are_the_real_count(fer_dir: Path, tmp_path: Path) -> None:
    events: list[dict] = []
    train(CappedRecipe(fer_dir, {"max_steps_per_epoch": 2, "batch_size": 8}), tmp_path / "run", epochs=3,
          device="cpu", seed=0, progress_interval=0.0, on_event=events.append, json_lines=False)
    steps = [e for e in events if e["event"] == "step"]
    assert len(steps) == 3 * 2
    # before: "steps" was len(ctx.batches) = 7 in every epoch ("step 2/7" for a 2-step epoch)
    assert {e["steps"] for e in steps} == {2}
    assert all(e["step"] <= e["steps"] for e in steps)
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["global_step"] for e in epochs] == [2, 4, 6]
    assert epochs[-1]["eta_s"] == 0.0


def test_one_eta_for_step_and_epoch_events() -> None:
    """Deterministic numbers: 10-step epochs of 1 s per step, 5 s evaluations, 4 epochs planned."""
    from ferkit.training.engine import _Run

    run = _Run(recipe=None, out_dir=Path("."), info=None, reporter=None,  # type: ignore[arg-type]
               progress_interval=0.0)
    run.total_epochs, run.steps_per_epoch = 4, 10
    # epoch 1 (index 0), 4 steps in: 6 + 3 x 10 steps left; no evaluation measured yet
    assert run.eta(0, 4, 4.0) == pytest.approx(36.0)
    run.step_time_total, run.steps_this_run, run.eval_time_total, run.evals_this_run = 10.0, 10, 5.0, 1
    # the epoch event after epoch 1: 3 epochs of 10 steps + 3 evaluations
    after_first = run.eta(1, 0, 0.0)
    assert after_first == pytest.approx(3 * 10 + 3 * 5)
    # the first step event of epoch 2 continues from there (one step fewer), it does not jump
    assert run.eta(1, 1, 1.0) == pytest.approx(after_first - 1.0)
    assert run.eta(4, 0, 0.0) == 0.0  # after the last epoch
    run.steps_per_epoch = None
    assert run.eta(1, 1, 1.0) is None


def test_flushing_denormals_keeps_numpy_quiet_and_right() -> None:
    import torch

    saved = dict(np.finfo._finfo_cache)
    torch.set_flush_denormal(False)
    np.finfo._finfo_cache.clear()  # as in a fresh training process
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            flush_denormals()
            np.finfo(np.float64), np.finfo(np.float32)  # what matplotlib asks when it draws the curves
        assert not [w for w in caught if "subnormal" in str(w.message)]
        torch.set_flush_denormal(False)
        assert np.finfo(np.float64).smallest_subnormal > 0  # the cached values were measured unflushed
    finally:
        np.finfo._finfo_cache.clear()
        np.finfo._finfo_cache.update(saved)
        torch.set_flush_denormal(True)  # what any training in this process leaves behind


def test_the_filter_matches_only_numpys_subnormal_warning() -> None:
    import re

    assert re.match(SUBNORMAL_WARNING, "The value of the smallest subnormal for <class 'numpy.float64'> type is zero.")
    assert not re.match(SUBNORMAL_WARNING, "The value of something else is zero.")


@pytest.mark.slow
def test_cli_job_log_has_no_subnormal_warning(fer_dir: Path, tmp_path: Path) -> None:
    """The real subprocess the app starts: its stderr (the dialog's log) holds no numpy warning."""
    import os

    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               FERKIT_CACHE="off")
    proc = subprocess.run([sys.executable, "-m", "tests.engine_support", "train", RECIPE_NAME, "--data", str(fer_dir),
                           "--out", str(tmp_path / "run"), "--epochs", "1", "--device", "cpu"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "subnormal" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
