"""Subject-independent k-fold splits (the CK+ / Oulu-CASIA / MMI protocol of the papers).

Expression datasets hold several images of the same person (CK+: the last three frames of each
sequence, several sequences per subject). If one person's images fall in both training and test
folds, a network can recognise the *person* and score far above what it would on a stranger,
so every paper evaluated here splits by subject: no subject appears in two folds.

Folds are balanced by image count, not by subject count, because subjects differ a lot in how
many images they contribute (CK+48: 3 to 33). Subjects are shuffled with a seed (so ties between
equal-sized subjects are broken differently per seed), sorted largest first, and each goes into
the currently lightest fold ("longest processing time first"). This greedy rule keeps the
heaviest and lightest fold within one subject's size of each other (the largest subject's
size bounds the gap at every step), and it is deterministic for a given seed, which is what lets
``ferkit cv`` and a recipe trained with ``fold=i`` agree on the held-out set without passing
index lists around.
"""
from __future__ import annotations

import re
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from ferkit.errors import UsageError

Split = tuple[np.ndarray, np.ndarray]

#: ``{fold}`` or ``{fold:SPEC}`` (a format spec such as ``02d``) inside an option value
_FOLD_FIELD = re.compile(r"\{fold(?::([^{}]*))?\}")


def format_fold(value: Any, fold: int) -> Any:
    """``value`` with every ``{fold}`` / ``{fold:SPEC}`` replaced by ``fold`` formatted with SPEC.

    Why: a later stage of a fold must start from the earlier stage of THE SAME fold (a checkpoint
    trained on another fold's training set has seen this fold's test subjects), so ``ferkit cv``
    formats per fold every option that names one, e.g.
    ``--emotion-checkpoint runs/cv_r12/fold-{fold:02d}/checkpoint.pt`` (``ferkit cv`` names its
    fold folders ``fold-XX``). Only the ``fold`` field is touched, so other braces in a path stay
    as they are; non-strings (and lists of them, element-wise) come back formatted the same way.
    """
    if isinstance(value, str):
        return _FOLD_FIELD.sub(lambda m: format(int(fold), m.group(1) or ""), value)
    if isinstance(value, list):
        return [format_fold(v, fold) for v in value]
    return value


def _as_int_array(subjects: Union[Sequence[int], torch.Tensor, np.ndarray]) -> np.ndarray:
    if isinstance(subjects, torch.Tensor):
        arr = subjects.detach().cpu().numpy()
    else:
        arr = np.asarray(subjects)
    if arr.ndim != 1:
        raise ValueError(f"subjects must be a 1-d sequence of ids, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"subject ids must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def subject_folds(subjects: Union[Sequence[int], torch.Tensor, np.ndarray], k: int, seed: int = 0) -> np.ndarray:
    """Fold number (0..k-1) of every image; all images of one subject share a fold."""
    arr = _as_int_array(subjects)
    if not isinstance(k, (int, np.integer)) or k < 2:
        raise UsageError(f"k-fold cross-validation needs k >= 2 folds, got {k!r}")
    ids, inverse, counts = np.unique(arr, return_inverse=True, return_counts=True)
    if k > len(ids):
        raise UsageError(f"cannot split {len(ids)} subject(s) into {k} subject-independent folds "
                         f"(every fold needs at least one subject); use --folds {max(2, len(ids))} or fewer")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ids))
    # stable sort keeps the seeded order among subjects with the same image count
    order = order[np.argsort(-counts[order], kind="stable")]
    loads = np.zeros(k, dtype=np.int64)
    subject_fold = np.empty(len(ids), dtype=np.int64)
    for s in order:
        f = int(np.argmin(loads))  # lightest fold; lowest index on ties
        subject_fold[s] = f
        loads[f] += counts[s]
    return subject_fold[inverse]


def subject_kfold(subjects: Union[Sequence[int], torch.Tensor, np.ndarray], k: int,
                  seed: int = 0) -> list[Split]:
    """``k`` (train_idx, test_idx) pairs of sorted int64 index arrays, subject-independent.

    Every index is in exactly one test fold; test fold ``i``'s subjects never occur in its
    training indices. Raises ``ValueError`` when ``k`` exceeds the number of distinct subjects.
    """
    fold_of = subject_folds(subjects, k, seed)
    all_idx = np.arange(len(fold_of), dtype=np.int64)
    return [(all_idx[fold_of != i], all_idx[fold_of == i]) for i in range(k)]


def fold_indices(subjects: Union[Sequence[int], torch.Tensor, np.ndarray], k: int, fold: int,
                 seed: int = 0) -> Split:
    """The (train_idx, test_idx) of one fold, with a clear error for an out-of-range fold."""
    if not 0 <= fold < k:
        raise UsageError(f"fold must be in 0..{k - 1} for {k} folds, got {fold}")
    return subject_kfold(subjects, k, seed)[fold]


# ---- what the fold-capable training recipes share ------------------------------------------------
# Every recipe with ``supports_folds`` takes the same three options and holds out the same fold,
# so ``ferkit cv`` and ``ferkit train --folds K --fold I`` agree; the option wording and the
# split live here once instead of in each recipe.
def add_fold_arguments(parser: Any, default_folds: Optional[int] = 10) -> None:
    """Add ``--folds``, ``--fold`` and ``--split-seed`` to a recipe's argument parser.

    ``default_folds=10`` (the papers' 10-fold protocol; ``--folds 0`` trains on every image)
    gives ``--fold`` the default 0. ``default_folds=None`` leaves both unset, for recipes where
    giving neither means "train on every image" and giving only one is an error. A flag the
    parser already defines (a command's generic option) is left to that definition.
    """
    def add(flag: str, **kwargs: Any) -> None:
        if flag not in getattr(parser, "_option_string_actions", {}):  # argparse has no public query
            parser.add_argument(flag, **kwargs)

    if default_folds is None:
        add("--folds", type=int, default=None, help="K of the subject-independent K-fold protocol")
        add("--fold", type=int, default=None, help="which fold (0..K-1) to hold out for evaluation")
    else:
        add("--folds", type=int, default=default_folds,
            help=f"subject-independent folds (paper: {default_folds}); 0 trains on every image")
        add("--fold", type=int, default=0, help="held-out fold, 0..folds-1")
    add("--split-seed", type=int, default=0, help="seed of the subject split")


def option_fold_indices(subjects: Union[Sequence[int], torch.Tensor, np.ndarray], folds: int, fold: int,
                        seed: int = 0) -> Split:
    """:func:`fold_indices` with the range error worded for the ``--folds`` / ``--fold`` options."""
    folds, fold = int(folds), int(fold)
    if not 0 <= fold < folds:
        raise UsageError(f"--fold must be in 0..{folds - 1} for --folds {folds}, got {fold}")
    return subject_kfold(subjects, folds, int(seed))[fold]


def split_dataset_fold(dataset: Any, folds: int, fold: int, seed: int = 0) -> tuple[Any, Optional[Any], str]:
    """(train, held-out test or None, description) of a ``FaceDataset`` with subject ids.

    ``folds <= 0`` keeps every image for training (no held-out set). The description is what a
    weights card's ``data`` field says about the split, e.g. "subject-independent fold 2 of 10
    (split seed 0): 880 train / 101 test images".
    """
    folds = int(folds)
    if folds <= 0:
        return dataset, None, f"all {len(dataset)} images (no held-out fold)"
    fold, seed = int(fold), int(seed)
    train_idx, test_idx = option_fold_indices(dataset.subjects, folds, fold, seed)
    desc = (f"subject-independent fold {fold} of {folds} (split seed {seed}): "
            f"{len(train_idx)} train / {len(test_idx)} test images")
    return dataset.subset(torch.as_tensor(train_idx)), dataset.subset(torch.as_tensor(test_idx)), desc


def heldout_subject_names(test: Optional[Any]) -> list[str]:
    """Sorted subject names of a held-out fold (what a card's ``heldout_identities`` lists)."""
    if test is None or test.subjects is None:
        return []
    ids = sorted({int(v) for v in test.subjects.tolist()})
    return sorted(test.subject_names[i] if test.subject_names else str(i) for i in ids)
