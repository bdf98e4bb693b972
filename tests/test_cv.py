"""`ferkit cv`: subject-independent k-fold with a tiny fold-capable recipe on a CK+48 fixture tree."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ferkit.data.ckplus import load_ckplus48
from ferkit.evaluation.cv import run_cv, to_model_input
from ferkit.evaluation.kfold import subject_kfold
from ferkit.models.weights import Preprocessing
from ferkit.recipes.registry import _RECIPES, register_recipe
from ferkit.training.recipe import Recipe, StepResult, TrainContext
from tests.engine_support import MODEL_NAME, TinyCNN
from tests.fixtures.datasets import make_ckplus48_tree

RECIPE = "test-cv/tiny-ckplus"
CLASSES = ["anger", "happy", "surprise"]


class TinyFoldRecipe(Recipe):
    """Holds out ``subject_kfold(subjects, folds, split_seed)[fold]`` like the paper recipes do."""

    name = RECIPE
    description = "test-only fold-capable recipe"
    default_epochs = 2
    supports_folds = True

    @classmethod
    def load_dataset(cls, data_dir: Path) -> Any:
        return load_ckplus48(data_dir, use_cache=False)

    def setup(self, ctx: TrainContext) -> None:
        ds = self.load_dataset(self.data_dir)
        train_idx, test_idx = subject_kfold(ds.subjects, int(self.options["folds"]),
                                            int(self.options["split_seed"]))[int(self.options["fold"])]
        self.classes = ds.classes
        self.x, self.y = ds.images[train_idx], ds.labels[train_idx]
        self.xv, self.yv = ds.images[test_idx], ds.labels[test_idx]
        # a normalisation that is not (0.5, 0.5), so cv must use the weights' own preprocessing
        self.prep = Preprocessing(input_size=48, grayscale=True, mean=0.3, std=0.2)
        self.model = TinyCNN(len(ds.classes), 4)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.optimizer}

    def train_epoch(self, ctx: TrainContext, epoch: int) -> Iterator[StepResult]:
        self.model.train()
        for idx in ctx.batches(len(self.y), 8, epoch):
            logits = self.model(self.prep.normalize(self.x[idx])).logits
            loss = F.cross_entropy(logits, self.y[idx])
            ctx.step(loss, self.optimizer)
            yield StepResult(loss=float(loss.detach()), correct=int((logits.argmax(1) == self.y[idx]).sum()), n=len(idx))

    @torch.no_grad()
    def evaluate(self, ctx: TrainContext, epoch: int) -> dict[str, float]:
        self.model.eval()
        pred = self.model(self.prep.normalize(self.xv)).logits.argmax(1)
        return {"val_accuracy": float((pred == self.yv).float().mean())}

    def weights_meta(self) -> dict[str, Any]:
        return {"name": "test-cv", "architecture": MODEL_NAME, "classes": list(self.classes),
                "preprocessing": asdict(self.prep), "model_cfg": {"num_classes": len(self.classes), "width": 4}}


class NoFoldRecipe(TinyFoldRecipe):
    name = "test-cv/no-folds"
    supports_folds = False


class FlipFoldRecipe(TinyFoldRecipe):
    """A recipe whose card says flip TTA and whose validation applies it, as the paper recipes do."""

    name = "test-cv/flip-tta"

    @torch.no_grad()
    def evaluate(self, ctx: TrainContext, epoch: int) -> dict[str, float]:
        self.model.eval()
        x = self.prep.normalize(self.xv)
        probs = F.softmax(self.model(x).logits, 1) + F.softmax(self.model(x.flip(-1)).logits, 1)
        return {"val_accuracy": float((probs.argmax(1) == self.yv).float().mean())}

    def weights_meta(self) -> dict[str, Any]:
        return {**super().weights_meta(), "tta": "flip"}


class FoldRefRecipe(TinyFoldRecipe):
    """Records the ``ref`` option each fold was built with (a later stage's per-fold checkpoint)."""

    name = "test-cv/fold-ref"
    seen: list[tuple[int, str]] = []

    def setup(self, ctx: TrainContext) -> None:
        FoldRefRecipe.seen.append((int(self.options["fold"]), str(self.options["ref"])))
        super().setup(ctx)


for _cls in (TinyFoldRecipe, NoFoldRecipe, FlipFoldRecipe, FoldRefRecipe):
    if _cls.name not in _RECIPES:
        register_recipe(_cls)


@pytest.fixture()
def ck_tree(tmp_path: Path) -> Path:
    # 6 subjects with 1-3 sequences each (3 frames per sequence): uneven subject sizes
    seqs = []
    for s, n_seq in zip(range(6), (3, 1, 2, 1, 2, 1)):
        for q in range(n_seq):
            seqs.append((f"S{100 + s:03d}", q + 1, CLASSES[(s + q) % 3]))
    make_ckplus48_tree(tmp_path / "ck", seqs)
    return tmp_path / "ck"


def _events(sink: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in sink if e["event"] == name]


def test_cv_end_to_end_report_and_resume(ck_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "cv"
    events: list[dict[str, Any]] = []
    summary = run_cv(TinyFoldRecipe, ck_tree, out, folds=3, epochs=1, device="cpu", emit=events.append,
                     progress_interval=0.0)
    ds = load_ckplus48(ck_tree, use_cache=False)
    assert (out / "cv.json").is_file() and (out / "confusion.png").stat().st_size > 1000
    assert (out / "folds.png").stat().st_size > 1000
    on_disk = json.loads((out / "cv.json").read_text())
    assert on_disk["mean_accuracy"] == pytest.approx(summary["mean_accuracy"])
    # every image tested exactly once, by subject-disjoint folds
    results = summary["fold_results"]
    assert len(results) == 3 and sum(r["n_test"] for r in results) == len(ds) == 30
    assert sum(r["n_test"] + 0 for r in results) == int(np.sum(summary["confusion"]))
    splits = subject_kfold(ds.subjects, 3, 0)
    for r, (train_idx, test_idx) in zip(results, splits):
        assert r["n_test"] == len(test_idx) and r["n_train"] == len(train_idx)
        assert int(np.sum(r["confusion"])) == len(test_idx)
        # cv's own evaluation of the checkpoint equals the recipe's held-out accuracy
        assert r["accuracy"] == pytest.approx(r["recipe_val_accuracy"], abs=1e-6)
        assert r["epochs"] == 1
    accs = np.array(summary["fold_accuracies"])
    assert summary["mean_accuracy"] == pytest.approx(accs.mean())
    assert summary["std_accuracy"] == pytest.approx(accs.std(ddof=1))
    assert summary["pooled_accuracy"] == pytest.approx(np.trace(summary["confusion"]) / 30)
    assert summary["classes"] == CLASSES and summary["complete"]
    # the thread count the folds trained with (the suite pins it: FERKIT_TRAIN_THREADS), and the setting
    import os

    assert summary["threads"] == int(os.environ["FERKIT_TRAIN_THREADS"])
    assert summary["threads_setting"] == os.environ["FERKIT_TRAIN_THREADS"]
    assert [e["fold"] for e in _events(events, "fold_end")] == [0, 1, 2]
    assert {e["fold"] for e in _events(events, "epoch")} == {0, 1, 2}  # engine events carry the fold

    # re-run: every fold is reused, nothing trains
    events.clear()
    again = run_cv(TinyFoldRecipe, ck_tree, out, folds=3, epochs=1, device="cpu", emit=events.append)
    assert all(e["reused"] for e in _events(events, "fold_end")) and not _events(events, "start")
    assert again["fold_accuracies"] == summary["fold_accuracies"]

    # a lost result.json with a finished checkpoint: evaluated again, not retrained
    (out / "fold-01" / "result.json").unlink()
    events.clear()
    run_cv(TinyFoldRecipe, ck_tree, out, folds=3, epochs=1, device="cpu", emit=events.append)
    assert not _events(events, "start")
    assert [e["reused"] for e in _events(events, "fold_end")] == [True, False, True]


def test_cv_resumes_half_trained_fold(ck_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "cv"
    from ferkit.training.engine import train

    recipe = TinyFoldRecipe(ck_tree, {"folds": 3, "fold": 2, "split_seed": 0, "epochs": 3})
    train(recipe, out / "fold-02", epochs=1, device="cpu", json_lines=False)  # 1 of 3 epochs done
    events: list[dict[str, Any]] = []
    summary = run_cv(TinyFoldRecipe, ck_tree, out, folds=3, epochs=3, device="cpu", only_folds=[2],
                     emit=events.append)
    start = _events(events, "start")
    assert len(start) == 1 and start[0]["resumed"] and start[0]["start_epoch"] == 1 and start[0]["fold"] == 2
    assert summary["folds_done"] == [2] and not summary["complete"]
    assert summary["fold_results"][0]["epochs"] == 3


def test_cv_changed_epochs_do_not_reuse_old_results(ck_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "cv"
    run_cv(TinyFoldRecipe, ck_tree, out, folds=3, epochs=1, device="cpu", only_folds=[0])
    events: list[dict[str, Any]] = []
    run_cv(TinyFoldRecipe, ck_tree, out, folds=3, epochs=2, device="cpu", only_folds=[0], emit=events.append)
    assert _events(events, "start")[0]["start_epoch"] == 1  # resumed the 1-epoch checkpoint to 2
    assert not _events(events, "fold_end")[0]["reused"]


def test_cv_errors(ck_tree: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no subject-independent fold protocol"):
        run_cv(NoFoldRecipe, ck_tree, tmp_path / "a", folds=3)
    with pytest.raises(ValueError, match=r"6 subject\(s\) into 7"):
        run_cv(TinyFoldRecipe, ck_tree, tmp_path / "b", folds=7)


def test_cli_cv_runs_and_prints_table(ck_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ferkit.cli import main

    rc = main(["cv", RECIPE, "--data", str(ck_tree), "--folds", "2", "--epochs", "1", "--out", str(tmp_path / "o"),
               "--device", "cpu", "--json"])
    assert rc == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert lines[0]["event"] == "cv_start" and lines[-1]["event"] == "summary"
    assert "mean ± std" in captured.err
    assert main(["cv", RECIPE, "--data", str(tmp_path / "missing"), "--folds", "2"]) == 2


def test_to_model_input_converts_channels_and_size() -> None:
    prep = Preprocessing(input_size=64, grayscale=False, mean=0.5, std=0.25)
    x = to_model_input(torch.full((2, 1, 48, 48), 255, dtype=torch.uint8), prep)
    assert x.shape == (2, 3, 64, 64) and torch.allclose(x, torch.full_like(x, 2.0))
    gray = Preprocessing(input_size=48, grayscale=True, mean=0.0, std=1.0)
    rgb = torch.zeros(1, 3, 48, 48, dtype=torch.uint8)
    rgb[:, 1] = 255  # pure green -> luma 0.587
    assert torch.allclose(to_model_input(rgb, gray), torch.full((1, 1, 48, 48), 0.587))


def test_cv_measures_each_fold_with_the_cards_tta(ck_tree: Path, tmp_path: Path) -> None:
    """Flip TTA in the card: cv's accuracy is the flip-averaged one, as `ferkit eval` and the recipe's
    own validation measure it (before, cv measured the single view and the two disagreed)."""
    summary = run_cv(FlipFoldRecipe, ck_tree, tmp_path / "cv", folds=3, epochs=2, device="cpu",
                     progress_interval=0.0)
    for r in summary["fold_results"]:
        assert r["tta"] == "flip" and r["accuracy"] == pytest.approx(r["recipe_val_accuracy"], abs=1e-6)
    assert "(flip)" in summary["protocol"]["evaluated"]


def test_cv_formats_fold_placeholders_per_fold(ck_tree: Path, tmp_path: Path) -> None:
    """A stage-3 option naming a per-fold stage-2 checkpoint gets each fold's own path (another fold's
    checkpoint has trained on this fold's test subjects); the result key keeps the template."""
    from ferkit.evaluation.cv import fold_dir
    from ferkit.evaluation.kfold import format_fold

    FoldRefRecipe.seen.clear()
    template = str(tmp_path / "stage2" / "fold-{fold:02d}" / "checkpoint.pt")
    summary = run_cv(FoldRefRecipe, ck_tree, tmp_path / "cv", folds=3, epochs=1, device="cpu",
                     options={"ref": template}, threads=1)
    assert FoldRefRecipe.seen == [(i, str(fold_dir(tmp_path / "stage2", i) / "checkpoint.pt")) for i in range(3)]
    assert summary["options"] == {"ref": template}
    assert format_fold("a/{fold}/{x}/b{fold:03d}", 7) == "a/7/{x}/b007"
    assert format_fold(["f{fold}", 3], 1) == ["f1", 3] and format_fold(None, 2) is None


def test_peak_epoch_reading_is_the_best_curve_value_beside_the_result(ck_tree: Path, tmp_path: Path) -> None:
    """The paper-style number (best epoch on the held-out fold) is read from each fold's curves."""
    from ferkit.evaluation.cv import peak_epoch_accuracy

    out = tmp_path / "cv"
    summary = run_cv(TinyFoldRecipe, ck_tree, out, folds=3, epochs=2, device="cpu")
    for r, peak in zip(summary["fold_results"], summary["peak_epoch_accuracies"]):
        rows = (out / f"fold-{r['fold']:02d}" / "curves.csv").read_text().splitlines()
        assert len(rows) == 3 and peak is not None
        assert peak >= r["recipe_val_accuracy"] - 1e-9  # the last epoch is one of the candidates
    assert summary["peak_epoch_mean_accuracy"] == pytest.approx(np.mean(summary["peak_epoch_accuracies"]))
    # hand-written curves: the maximum, whatever epoch it is in
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "curves.csv").write_text("epoch,val_accuracy\n1,0.5\n2,0.875\n3,0.75\n")
    assert peak_epoch_accuracy(tmp_path / "f") == 0.875
    assert peak_epoch_accuracy(tmp_path / "missing") is None
