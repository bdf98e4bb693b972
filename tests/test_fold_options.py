"""The fold options and split shared by every fold-capable recipe (ferkit.evaluation.kfold)."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from ferkit.data.dataset import FaceDataset
from ferkit.evaluation.kfold import add_fold_arguments, option_fold_indices, split_dataset_fold, subject_kfold


def _dataset(subjects: list[int]) -> FaceDataset:
    n = len(subjects)
    return FaceDataset(images=torch.zeros(n, 1, 4, 4, dtype=torch.uint8), labels=torch.arange(n) % 3,
                       classes=["a", "b", "c"], subjects=torch.tensor(subjects, dtype=torch.int64),
                       paths=[f"img{i}.png" for i in range(n)])


def test_split_holds_out_exactly_the_subject_kfold_fold() -> None:
    ds = _dataset([0, 0, 1, 1, 1, 2, 3, 3, 4, 5])
    train, test, desc = split_dataset_fold(ds, 3, 1, seed=7)
    train_idx, test_idx = subject_kfold(ds.subjects, 3, 7)[1]
    assert train.paths == [ds.paths[i] for i in train_idx] and test.paths == [ds.paths[i] for i in test_idx]
    assert not set(train.subjects.tolist()) & set(test.subjects.tolist())
    assert desc == (f"subject-independent fold 1 of 3 (split seed 7): {len(train_idx)} train / "
                    f"{len(test_idx)} test images")


def test_zero_folds_keeps_every_image_and_bad_fold_names_the_options() -> None:
    ds = _dataset([0, 1, 2, 3])
    train, test, desc = split_dataset_fold(ds, 0, 0)
    assert train is ds and test is None and desc == "all 4 images (no held-out fold)"
    with pytest.raises(ValueError, match=r"--fold must be in 0\.\.1 for --folds 2, got 2"):
        option_fold_indices(ds.subjects, 2, 2)
    tr, te = option_fold_indices(np.array([0, 1, 2, 3]), 2, 0)
    assert sorted(tr.tolist() + te.tolist()) == [0, 1, 2, 3]


def test_fold_arguments_defaults_and_existing_flags_are_kept() -> None:
    p = argparse.ArgumentParser()
    add_fold_arguments(p)
    assert vars(p.parse_args([])) == {"folds": 10, "fold": 0, "split_seed": 0}
    p = argparse.ArgumentParser()
    add_fold_arguments(p, default_folds=None)
    assert vars(p.parse_args(["--fold", "2"])) == {"folds": None, "fold": 2, "split_seed": 0}
    p = argparse.ArgumentParser()
    p.add_argument("--folds", type=int, default=5)  # a command's own generic option wins
    add_fold_arguments(p)
    assert p.parse_args([]).folds == 5
