"""Verification metrics on synthetic scores/embeddings whose answers are known by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ferkit.evaluation.verification import (accuracy_at, best_threshold, cosine_similarity, draw_balanced_pairs,
                                            equal_error_rate, evaluate_pairs, pair_scores, roc_auc, roc_curve)


def test_perfectly_separable_embeddings() -> None:
    # two identities on orthogonal axes with small jitter: same pairs cos ~ 1, different ~ 0
    g = torch.Generator().manual_seed(0)
    a = torch.tensor([1.0, 0.0, 0.0, 0.0]) + 0.05 * torch.randn(10, 4, generator=g)
    b = torch.tensor([0.0, 0.0, 1.0, 0.0]) + 0.05 * torch.randn(10, 4, generator=g)
    feats = torch.cat([a, b])
    subjects = np.r_[np.zeros(10, int), np.ones(10, int)]
    first, second, same, fold = draw_balanced_pairs(subjects, 40, seed=3, n_folds=10)
    assert same.sum() == (~same).sum() == 20
    assert (subjects[first] == subjects[second]).tolist() == same.tolist()
    scores = pair_scores(feats, first, second)
    res = evaluate_pairs(scores, same, fold)
    assert res.accuracy == 1.0 and res.best_threshold_accuracy == 1.0
    assert res.auc == 1.0
    assert res.eer == 0.0
    assert scores[~same].max() < res.threshold < scores[same].min()


def test_known_overlapping_case_by_hand() -> None:
    # positives 0.9 0.8 0.4, negatives 0.7 0.3 0.2
    scores = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2])
    same = np.array([1, 1, 1, 0, 0, 0], bool)
    # AUC: positive-above-negative pairs = 3 + 3 + 2 = 8 of 9
    assert roc_auc(scores, same) == pytest.approx(8 / 9)
    fpr, tpr, thr = roc_curve(scores, same)
    assert fpr.tolist() == pytest.approx([0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    assert tpr.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1])
    assert np.isinf(thr[0]) and thr[1:].tolist() == pytest.approx([0.9, 0.8, 0.7, 0.4, 0.3, 0.2])
    # at threshold 0.7: FAR = 1/3 (0.7 accepted), FRR = 1/3 (0.4 rejected) -> EER = 1/3
    eer, eer_thr = equal_error_rate(scores, same)
    assert eer == pytest.approx(1 / 3)
    assert eer_thr == pytest.approx(0.7)
    # best accuracy: 5/6 at a cut between 0.8|0.7 or 0.4|0.3; the median of the plateau cuts is chosen
    thr_best, acc = best_threshold(scores, same)
    assert acc == pytest.approx(5 / 6)
    assert thr_best in (pytest.approx(0.75), pytest.approx(0.35))
    assert accuracy_at(scores, same, thr_best) == pytest.approx(5 / 6)


def test_eer_interpolates_between_roc_points() -> None:
    # positives 0.9 0.6, negatives 0.7 0.1: ROC (0,0) (0,.5) (.5,.5) (.5,1) (1,1)
    # FNR = 1 - tpr: at fpr=.5 fnr is .5 exactly (point (.5,.5)) -> EER .5
    scores = np.array([0.9, 0.6, 0.7, 0.1])
    same = np.array([1, 1, 0, 0], bool)
    assert equal_error_rate(scores, same)[0] == pytest.approx(0.5)
    # positives 0.9 0.8 0.6 0.5, negatives 0.7 0.4 0.3 0.2: ROC (0,.5) (.25,.5) (.25,.75) (.25,1):
    # fpr - fnr = -.5, -.25, 0 at (.25, .75) -> EER .25
    scores = np.array([0.9, 0.8, 0.6, 0.5, 0.7, 0.4, 0.3, 0.2])
    same = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    assert equal_error_rate(scores, same)[0] == pytest.approx(0.25)


def test_ties_count_half_in_auc() -> None:
    scores = np.array([0.5, 0.5])
    same = np.array([True, False])
    assert roc_auc(scores, same) == pytest.approx(0.5)


def test_tenfold_threshold_is_chosen_on_other_folds() -> None:
    # fold 0's pairs would need a threshold between 0.2 and 0.3; the other folds all sit at 0.6/0.4
    scores = np.r_[[0.3, 0.2], np.tile([0.6, 0.4], 9)]
    same = np.r_[[True, False], np.tile([True, False], 9)]
    folds = np.r_[[0, 0], np.repeat(np.arange(1, 10), 2)]
    res = evaluate_pairs(scores, same, folds)
    # fold 0 tested at a threshold in (0.4, 0.6): its positive (0.3) is rejected -> accuracy 0.5
    assert res.fold_accuracies[0] == pytest.approx(0.5)
    assert all(a == 1.0 for a in res.fold_accuracies[1:])
    assert res.accuracy == pytest.approx(0.95)
    assert len(res.fold_thresholds) == 10


def test_cosine_similarity_values() -> None:
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [2.0, 2.0], [-1.0, 0.0]])
    assert cosine_similarity(a, b).tolist() == pytest.approx([0.0, 1.0, -1.0])


def test_draw_pairs_balanced_distinct_and_seeded() -> None:
    subjects = np.repeat(np.arange(15), 11)  # Yale-like: 15 subjects x 11 images
    first, second, same, fold = draw_balanced_pairs(subjects, 600, seed=1)
    assert len(first) == 600 and same.sum() == 300
    assert (subjects[first] == subjects[second]).tolist() == same.tolist()
    assert (first != second).all()
    assert len({(a, b) for a, b in zip(first, second)}) == 600
    assert np.bincount(fold[same]).tolist() == [30] * 10 and np.bincount(fold[~same]).tolist() == [30] * 10
    again = draw_balanced_pairs(subjects, 600, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip((first, second, same, fold), again))
    # more than available: 15 * C(11, 2) = 825 same pairs -> shrinks, stays balanced
    first, _, same, _ = draw_balanced_pairs(subjects, 5000, seed=1)
    assert same.sum() == (~same).sum() == 825


def test_bad_inputs_are_clear() -> None:
    with pytest.raises(ValueError, match="both same-identity and different"):
        evaluate_pairs([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="no identity has two images"):
        draw_balanced_pairs([0, 1, 2], 40)
    with pytest.raises(ValueError, match="too small"):
        draw_balanced_pairs([0, 0, 1, 1], 4)
