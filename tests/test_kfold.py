"""Subject-independent k-fold: property test over many random subject lists + edge cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ferkit.evaluation.kfold import fold_indices, subject_folds, subject_kfold


def _random_subjects(rng: np.random.Generator) -> tuple[np.ndarray, int]:
    n_subjects = int(rng.integers(2, 40))
    # uneven image counts per subject, like CK+ (3..33 images per subject)
    counts = rng.integers(1, int(rng.integers(2, 30)), size=n_subjects)
    ids = rng.choice(np.arange(-50, 1000), size=n_subjects, replace=False)  # arbitrary, non-contiguous ids
    subjects = np.repeat(ids, counts)
    rng.shuffle(subjects)
    k = int(rng.integers(2, n_subjects + 1))
    return subjects, k


def test_property_random_subject_lists() -> None:
    rng = np.random.default_rng(12345)
    for case in range(400):
        subjects, k = _random_subjects(rng)
        seed = int(rng.integers(0, 1000))
        splits = subject_kfold(subjects, k, seed=seed)
        assert len(splits) == k
        n = len(subjects)
        seen = np.zeros(n, dtype=np.int64)
        test_subject_sets = []
        for train_idx, test_idx in splits:
            assert train_idx.dtype == np.int64 and test_idx.dtype == np.int64
            assert len(test_idx) > 0, f"case {case}: empty fold"
            # train and test partition the indices
            assert np.array_equal(np.sort(np.concatenate([train_idx, test_idx])), np.arange(n))
            # no subject on both sides
            assert not set(subjects[train_idx]) & set(subjects[test_idx]), f"case {case}: subject leak"
            seen[test_idx] += 1
            test_subject_sets.append(set(subjects[test_idx].tolist()))
        # every index in exactly one test fold
        assert (seen == 1).all(), f"case {case}"
        # no subject in two test folds
        for i in range(k):
            for j in range(i + 1, k):
                assert not test_subject_sets[i] & test_subject_sets[j]
        # balanced within the largest subject's image count
        sizes = [len(t) for _, t in splits]
        largest = np.unique(subjects, return_counts=True)[1].max()
        assert max(sizes) - min(sizes) <= largest, f"case {case}: sizes {sizes}, largest subject {largest}"
        # deterministic for a seed
        again = subject_kfold(subjects, k, seed=seed)
        for (a_tr, a_te), (b_tr, b_te) in zip(splits, again):
            assert np.array_equal(a_tr, b_tr) and np.array_equal(a_te, b_te)


def test_equal_subjects_split_exactly_evenly() -> None:
    # 20 subjects x 3 images into 10 folds: greedy must give 6 images (2 subjects) per fold
    subjects = np.repeat(np.arange(20), 3)
    sizes = [len(t) for _, t in subject_kfold(subjects, 10)]
    assert sizes == [6] * 10


def test_largest_first_known_answer() -> None:
    # subjects with 5, 4, 3, 3 images into 2 folds: LPT gives {5, 3} = 8 and {4, 3} = 7
    subjects = [0] * 5 + [1] * 4 + [2] * 3 + [3] * 3
    folds = subject_folds(subjects, 2, seed=0)
    sizes = sorted(np.bincount(folds).tolist())
    assert sizes == [7, 8]
    assert folds[0] != folds[5]  # the two largest subjects go to different folds


def test_seed_changes_tie_breaking_but_not_validity() -> None:
    subjects = np.repeat(np.arange(30), 2)
    a = subject_folds(subjects, 5, seed=0)
    b = subject_folds(subjects, 5, seed=1)
    assert not np.array_equal(a, b)


def test_accepts_tensor_and_list() -> None:
    subjects = [3, 3, 1, 1, 2, 2, 7]
    a = subject_kfold(subjects, 3, seed=4)
    b = subject_kfold(torch.tensor(subjects), 3, seed=4)
    for (a_tr, a_te), (b_tr, b_te) in zip(a, b):
        assert np.array_equal(a_te, b_te) and np.array_equal(a_tr, b_tr)


def test_too_many_folds_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"3 subject\(s\) into 4"):
        subject_kfold([0, 0, 1, 2], 4)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="k >= 2"):
        subject_kfold([0, 1, 2], 1)
    with pytest.raises(ValueError, match="integers"):
        subject_kfold([0.5, 1.5], 2)
    with pytest.raises(ValueError, match="fold must be in 0..2"):
        fold_indices([0, 1, 2], 3, 3)
    train, test = fold_indices([0, 1, 2], 3, 1)
    assert len(test) == 1 and len(train) == 2


def test_ckplus48_real_subjects(shared_data) -> None:
    from ferkit.data.ckplus import load_ckplus48

    ds = load_ckplus48(shared_data / "ckplus48")
    splits = subject_kfold(ds.subjects, 10, seed=0)
    sizes = [len(t) for _, t in splits]
    assert sum(sizes) == len(ds) == 981
    largest = int(torch.bincount(ds.subjects).max())
    assert max(sizes) - min(sizes) <= largest
