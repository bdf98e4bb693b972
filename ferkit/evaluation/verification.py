"""Face verification with identity features: "are these two faces the same person?"

The protocol is LFW's (Huang et al. 2007), which DeepID, Light CNN and EIFN's identity branch
are judged on: score each pair by the cosine similarity of the two identity features, call the
pair "same" when the score reaches a threshold, and choose that threshold on nine of ten folds
before measuring accuracy on the tenth (so the reported accuracy never saw its own threshold).
Threshold-free figures come with it: ROC AUC (probability that a random same-pair scores above
a random different-pair) and the equal error rate (false accepts = false rejects).

When a dataset has no pairs file (identity folders: CelebA subset, ORL, Yale) we draw balanced
pairs with a seed (half same, half different) and run the same 10-fold protocol on them. On Yale A
the pairs are drawn *across expressions* by default: the two faces of every pair show different
expression conditions (happy, normal, sad, sleepy, surprised, wink), because an identity feature
that only matches a person at the same expression is useless to an expression-recognition app.

A deployed decision needs a threshold that says how often strangers pass: :func:`threshold_at_far`
picks the lowest threshold whose false-accept rate on different-identity pairs is at most a target
(e.g. 1 %), and :func:`calibrate_far` runs it in the 10-fold way (calibrate on nine folds, measure
FAR and true-accept rate on the tenth) so the reported rates never saw their own threshold.

Everything here works on plain arrays; :mod:`ferkit.cli.eval_verification` turns a model and a
folder into features and calls :func:`evaluate_pairs`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from ferkit.errors import NotFoundError, UsageError

ArrayLike = Union[np.ndarray, Sequence[float], torch.Tensor]


def _np(x: ArrayLike, dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _check(scores: ArrayLike, same: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s = _np(scores)
    y = _np(same, dtype=bool)
    if s.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and same-labels {y.shape} must be 1-d and equally long")
    if not y.any() or y.all():
        raise ValueError("verification needs both same-identity and different-identity pairs")
    if not np.isfinite(s).all():
        raise ValueError("similarity scores contain NaN/inf (identity features of zero length?)")
    return s, y


# ---------------------------------------------------------------------------------------------
# similarity
def cosine_similarity(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Row-wise cosine similarity of two ``[N, D]`` feature matrices -> ``[N]`` in [-1, 1]."""
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"feature matrices must both be [N, D], got {tuple(a.shape)} and {tuple(b.shape)}")
    a = a.double()
    b = b.double()
    return (a * b).sum(1) / (a.norm(dim=1).clamp_min(eps) * b.norm(dim=1).clamp_min(eps))


def pair_scores(features: torch.Tensor, first: ArrayLike, second: ArrayLike) -> np.ndarray:
    """Cosine similarity of ``features[first[p]]`` and ``features[second[p]]`` for every pair ``p``."""
    i = torch.as_tensor(_np(first, np.int64))
    j = torch.as_tensor(_np(second, np.int64))
    return cosine_similarity(features[i], features[j]).cpu().numpy()


# ---------------------------------------------------------------------------------------------
# threshold-free metrics
def roc_curve(scores: ArrayLike, same: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) with "same" predicted for ``score >= threshold``.

    Thresholds are the distinct scores in decreasing order, preceded by +inf (nothing accepted),
    so the curve starts at (0, 0) and ends at (1, 1).
    """
    s, y = _check(scores, same)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(~y_sorted)
    # keep the last position of each run of equal scores (a threshold accepts all ties at once)
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], len(s_sorted) - 1]
    tpr = np.r_[0.0, tp[last] / y.sum()]
    fpr = np.r_[0.0, fp[last] / (~y).sum()]
    thresholds = np.r_[np.inf, s_sorted[last]]
    return fpr, tpr, thresholds


def roc_auc(scores: ArrayLike, same: ArrayLike) -> float:
    """Area under the ROC curve (trapezoids; ties count half, as in the Mann-Whitney U statistic)."""
    fpr, tpr, _ = roc_curve(scores, same)
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy 2 renamed trapz
    return float(trapezoid(tpr, fpr))


def equal_error_rate(scores: ArrayLike, same: ArrayLike) -> tuple[float, float]:
    """(EER, threshold): where the false accept rate equals the false reject rate (1 - tpr).

    Between two ROC points the rates are interpolated linearly; the threshold is interpolated the
    same way (finite thresholds only).
    """
    fpr, tpr, thr = roc_curve(scores, same)
    fnr = 1.0 - tpr
    diff = fpr - fnr  # starts at -1 (accept nothing), ends at +1 (accept everything)
    i = int(np.argmax(diff >= 0))
    if diff[i] == 0 or i == 0:
        return float(fpr[i]), float(thr[i] if np.isfinite(thr[i]) else thr[i + 1])
    t = -diff[i - 1] / (diff[i] - diff[i - 1])
    eer = fpr[i - 1] + t * (fpr[i] - fpr[i - 1])
    lo = thr[i - 1] if np.isfinite(thr[i - 1]) else thr[i]
    threshold = lo + t * (thr[i] - lo)
    return float(eer), float(threshold)


# ---------------------------------------------------------------------------------------------
# thresholded accuracy
def best_threshold(scores: ArrayLike, same: ArrayLike) -> tuple[float, float]:
    """(threshold, accuracy) maximising accuracy of "same iff score >= threshold" on these pairs.

    Candidate thresholds lie midway between consecutive distinct scores (plus one below the
    lowest and one above the highest), so the rule never depends on how a tie at the threshold
    is broken. Among equally good thresholds the median one is returned (a stable choice that
    sits inside the accuracy plateau rather than on its edge).
    """
    s, y = _check(scores, same)
    order = np.argsort(s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    n = len(s)
    # cut c (0..n): pairs [c:] predicted same; valid where s[c-1] < s[c]
    neg_below = np.r_[0, np.cumsum(~y_sorted)]             # true negatives below the cut
    pos_above = y.sum() - np.r_[0, np.cumsum(y_sorted)]     # true positives at/above the cut
    correct = neg_below + pos_above
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = s_sorted[1:] > s_sorted[:-1]
    cuts = np.nonzero(valid)[0]
    best = cuts[correct[cuts] == correct[cuts].max()]
    c = int(best[len(best) // 2])
    if c == 0:
        threshold = s_sorted[0] - 1e-6
    elif c == n:
        threshold = s_sorted[-1] + 1e-6
    else:
        threshold = 0.5 * (s_sorted[c - 1] + s_sorted[c])
    return float(threshold), float(correct[c] / n)


def best_balanced_threshold(sim: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """Verification accuracy at the best threshold on balanced classes: max over t of (TPR+TNR)/2."""
    order = np.argsort(-sim)
    s, y = sim[order], same[order].astype(bool)
    n_pos, n_neg = max(1, int(y.sum())), max(1, int((~y).sum()))
    tp = np.cumsum(y) / n_pos            # accept the first k pairs (similarity >= s[k-1])
    tn = 1.0 - np.cumsum(~y) / n_neg
    bal = 0.5 * (tp + tn)
    k = int(np.argmax(bal))
    return float(bal[k]), float(s[k])


def all_pairs_accuracy(features: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """:func:`best_balanced_threshold` over every pair of ``features`` (cosine similarity; a pair is
    the same person when its labels agree): (accuracy, threshold), a quick check during training."""
    f = F.normalize(features, dim=1)
    iu = torch.triu_indices(len(f), len(f), offset=1)
    labels = labels.to(f.device)
    same = (labels[:, None] == labels[None, :])[iu[0], iu[1]].cpu().numpy()
    return best_balanced_threshold((f @ f.T)[iu[0], iu[1]].cpu().numpy(), same)


def accuracy_at(scores: ArrayLike, same: ArrayLike, threshold: float) -> float:
    s = _np(scores)
    y = _np(same, dtype=bool)
    return float(((s >= threshold) == y).mean())


@dataclass
class VerificationResult:
    """What `ferkit eval-verification --json` prints (plus the ROC arrays for the plot)."""

    #: mean accuracy over the folds, each tested at the threshold chosen on the other folds
    accuracy: float
    accuracy_std: float
    fold_accuracies: list[float]
    fold_thresholds: list[float]
    #: threshold that maximises accuracy on all pairs (what a deployment would use) and its accuracy
    threshold: float
    best_threshold_accuracy: float
    auc: float
    eer: float
    eer_threshold: float
    n_pairs: int
    n_same: int
    n_different: int
    fpr: list[float] = field(default_factory=list, repr=False)
    tpr: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("fpr")
        d.pop("tpr")
        return d


def evaluate_pairs(scores: ArrayLike, same: ArrayLike, folds: Optional[ArrayLike] = None) -> VerificationResult:
    """The LFW protocol on scored pairs: per fold, threshold from the other folds, accuracy on it.

    ``folds`` gives each pair's fold id (LFW pairs.txt: 10 sets of 300 + 300); without it (or with
    a single fold, LFW View 1's pairsDevTest.txt) the result has one "fold" (all pairs) and the
    accuracy is the best-threshold accuracy on those same pairs (optimistic; say so when reporting).
    """
    s, y = _check(scores, same)
    threshold, best_acc = best_threshold(s, y)
    fold_acc: list[float] = []
    fold_thr: list[float] = []
    f = None if folds is None else _np(folds, np.int64)
    if f is not None and f.shape != s.shape:
        raise ValueError(f"fold ids {f.shape} do not match the {len(s)} pairs")
    if f is not None and len(np.unique(f)) > 1:
        for k in np.unique(f):
            test = f == k
            train = ~test
            thr, _ = best_threshold(s[train], y[train])
            fold_thr.append(thr)
            fold_acc.append(accuracy_at(s[test], y[test], thr))
    else:
        fold_acc, fold_thr = [best_acc], [threshold]
    eer, eer_thr = equal_error_rate(s, y)
    fpr, tpr, _ = roc_curve(s, y)
    acc = np.asarray(fold_acc)
    return VerificationResult(
        accuracy=float(acc.mean()), accuracy_std=float(acc.std(ddof=1)) if acc.size > 1 else 0.0,
        fold_accuracies=[float(a) for a in acc], fold_thresholds=[float(t) for t in fold_thr],
        threshold=threshold, best_threshold_accuracy=best_acc, auc=roc_auc(s, y), eer=eer, eer_threshold=eer_thr,
        n_pairs=int(len(s)), n_same=int(y.sum()), n_different=int((~y).sum()),
        fpr=fpr.tolist(), tpr=tpr.tolist())


# ---------------------------------------------------------------------------------------------
# thresholds at a false-accept rate
def threshold_at_far(scores: ArrayLike, same: ArrayLike, far: float = 0.01) -> tuple[float, float, float]:
    """(threshold, FAR, TAR) of the lowest threshold whose false-accept rate is at most ``far``.

    "Same" is predicted for ``score >= threshold``. With ``n`` different-identity pairs at most
    ``k = floor(far * n)`` of them may be accepted, so the threshold sits just above the
    ``(k+1)``-th highest different-pair score (the next float up: the lowest threshold, hence the
    highest true-accept rate, that keeps FAR <= ``far`` on these pairs). Ties at that score are
    all rejected, so FAR can come out below the target, never above it.
    """
    s, y = _check(scores, same)
    if not 0.0 <= far < 1.0:
        raise UsageError(f"--far must be in [0, 1), got {far}")
    neg = np.sort(s[~y])[::-1]
    k = int(np.floor(far * len(neg) + 1e-9))
    threshold = float(np.nextafter(neg[k], np.inf)) if k < len(neg) else float(neg[-1])
    accept = s >= threshold
    return threshold, float(accept[~y].mean()), float(accept[y].mean())


@dataclass
class FarCalibration:
    """A threshold calibrated at a target false-accept rate, with held-out FAR / TAR (10-fold)."""

    target_far: float
    #: calibrated on all pairs: the threshold a weights card ships
    threshold: float
    #: mean over folds of the FAR / TAR measured on the held-out fold at the other folds' threshold
    far: float
    tar: float
    far_std: float
    tar_std: float
    fold_thresholds: list[float]
    fold_far: list[float]
    fold_tar: list[float]
    #: FAR / TAR of ``threshold`` on all pairs (in-sample; FAR <= target by construction)
    all_pairs_far: float
    all_pairs_tar: float
    #: "10-fold" or "in-sample" (one fold: FAR / TAR measured on the calibration pairs themselves)
    protocol: str

    def summary(self) -> dict:
        return asdict(self)


def calibrate_far(scores: ArrayLike, same: ArrayLike, folds: Optional[ArrayLike] = None,
                  far: float = 0.01) -> FarCalibration:
    """Threshold at ``far`` on all pairs, and per fold: calibrated on the others, measured on it."""
    s, y = _check(scores, same)
    threshold, all_far, all_tar = threshold_at_far(s, y, far)
    f = None if folds is None else _np(folds, np.int64)
    if f is not None and f.shape != s.shape:
        raise ValueError(f"fold ids {f.shape} do not match the {len(s)} pairs")
    thr_k: list[float] = []
    far_k: list[float] = []
    tar_k: list[float] = []
    if f is not None and len(np.unique(f)) > 1:
        for k in np.unique(f):
            test = f == k
            t, _, _ = threshold_at_far(s[~test], y[~test], far)
            accept = s[test] >= t
            yt = y[test]
            thr_k.append(t)
            far_k.append(float(accept[~yt].mean()) if (~yt).any() else 0.0)
            tar_k.append(float(accept[yt].mean()) if yt.any() else 0.0)
        protocol = f"{len(thr_k)}-fold"
    else:
        thr_k, far_k, tar_k, protocol = [threshold], [all_far], [all_tar], "in-sample"
    fa, ta = np.asarray(far_k), np.asarray(tar_k)
    return FarCalibration(target_far=float(far), threshold=threshold, far=float(fa.mean()), tar=float(ta.mean()),
                          far_std=float(fa.std(ddof=1)) if fa.size > 1 else 0.0,
                          tar_std=float(ta.std(ddof=1)) if ta.size > 1 else 0.0,
                          fold_thresholds=thr_k, fold_far=[float(v) for v in fa], fold_tar=[float(v) for v in ta],
                          all_pairs_far=all_far, all_pairs_tar=all_tar, protocol=protocol)


# ---------------------------------------------------------------------------------------------
# pairs drawn from identity folders
def draw_balanced_pairs(subjects: ArrayLike, n_pairs: int, seed: int = 0,
                        n_folds: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(first, second, same, fold) index arrays: ``n_pairs // 2`` same and as many different pairs.

    Same pairs: a random identity with >= 2 images, two distinct images of it. Different pairs:
    two distinct random identities, one random image of each. No pair is drawn twice. When the
    data cannot give ``n_pairs // 2`` distinct same pairs, both halves shrink to what it can give
    (the set stays balanced). Pairs are dealt into ``n_folds`` folds with equal same/different
    counts, seeded, for the 10-fold threshold protocol.
    """
    subj = _np(subjects, np.int64)
    if n_pairs < 2 * n_folds:
        raise UsageError(f"--n-pairs {n_pairs} is too small for {n_folds} folds (need at least {2 * n_folds})")
    rng = np.random.default_rng(seed)
    ids, inverse = np.unique(subj, return_inverse=True)
    members = [np.nonzero(inverse == k)[0] for k in range(len(ids))]
    if len(ids) < 2:
        raise UsageError("verification needs at least two identities")
    multi = [m for m in members if len(m) >= 2]
    if not multi:
        raise UsageError("no identity has two images, so no same-identity pair can be drawn")
    available_same = sum(len(m) * (len(m) - 1) // 2 for m in multi)
    n = len(subj)
    available_diff = n * (n - 1) // 2 - sum(len(m) * (len(m) - 1) // 2 for m in members)
    half = min(n_pairs // 2, available_same, available_diff)
    if half < n_folds:
        raise UsageError(f"only {available_same} distinct same-identity pairs exist; need at least {n_folds}")
    # same pairs: identity uniform among those with >= 2 images (LFW-like, not image-weighted)
    same_pairs: set[tuple[int, int]] = set()
    if half * 2 > available_same:  # rejection sampling would crawl: enumerate and sample instead
        every = [(int(m[a]), int(m[b])) for m in multi for a in range(len(m)) for b in range(a + 1, len(m))]
        same_pairs = {every[t] for t in rng.choice(len(every), size=half, replace=False)}
    while len(same_pairs) < half:
        m = multi[int(rng.integers(len(multi)))]
        a, b = rng.choice(m, size=2, replace=False)
        same_pairs.add((int(min(a, b)), int(max(a, b))))
    diff_pairs: set[tuple[int, int]] = set()
    while len(diff_pairs) < half:
        ka, kb = rng.choice(len(ids), size=2, replace=False)
        a = int(rng.choice(members[ka]))
        b = int(rng.choice(members[kb]))
        diff_pairs.add((min(a, b), max(a, b)))
    same_list = sorted(same_pairs)
    diff_list = sorted(diff_pairs)
    rng.shuffle(same_list)
    rng.shuffle(diff_list)
    first = np.array([p[0] for p in same_list + diff_list], dtype=np.int64)
    second = np.array([p[1] for p in same_list + diff_list], dtype=np.int64)
    same = np.r_[np.ones(half, dtype=bool), np.zeros(half, dtype=bool)]
    fold = np.r_[np.arange(half) % n_folds, np.arange(half) % n_folds].astype(np.int64)
    return first, second, same, fold


#: Yale A conditions that are facial expressions (the others vary lighting or glasses)
YALE_EXPRESSIONS = ("happy", "normal", "sad", "sleepy", "surprised", "wink")


def draw_cross_condition_pairs(subjects: ArrayLike, conditions: Sequence[str], n_pairs: int, seed: int = 0,
                               n_folds: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Like :func:`draw_balanced_pairs`, but the two images of every pair have different conditions.

    For Yale A "across expressions": a same pair is one person at two different expressions, a
    different pair two people at two different expressions (so an expression match can never
    stand in for an identity match). Same pairs are all enumerated (small sets: Yale A has 15 x 15
    of them) and sampled without replacement when there are more than ``n_pairs // 2``; the
    different pairs are drawn uniformly over image pairs. Folds as in :func:`draw_balanced_pairs`.
    """
    subj = _np(subjects, np.int64)
    cond = np.asarray(list(conditions))
    if cond.shape != subj.shape:
        raise ValueError(f"{len(cond)} conditions for {len(subj)} images")
    if n_pairs < 2 * n_folds:
        raise UsageError(f"--n-pairs {n_pairs} is too small for {n_folds} folds (need at least {2 * n_folds})")
    rng = np.random.default_rng(seed)
    n = len(subj)
    i, j = np.triu_indices(n, k=1)
    differ = cond[i] != cond[j]
    same_all = np.nonzero(differ & (subj[i] == subj[j]))[0]
    diff_all = np.nonzero(differ & (subj[i] != subj[j]))[0]
    half = min(n_pairs // 2, len(same_all), len(diff_all))
    if half < n_folds:
        raise UsageError(f"only {len(same_all)} same-person pairs across different conditions exist; "
                         f"need at least {n_folds}")
    pick_same = same_all[rng.choice(len(same_all), size=half, replace=False)]
    pick_diff = diff_all[rng.choice(len(diff_all), size=half, replace=False)]
    chosen = np.r_[pick_same, pick_diff]
    same = np.r_[np.ones(half, dtype=bool), np.zeros(half, dtype=bool)]
    fold = np.r_[np.arange(half) % n_folds, np.arange(half) % n_folds].astype(np.int64)
    return i[chosen].astype(np.int64), j[chosen].astype(np.int64), same, fold


# ---------------------------------------------------------------------------------------------
# from a model and a folder to a result
EVAL_BATCH = 256


def identity_features(model: torch.nn.Module, images: torch.Tensor, preprocessing, device: torch.device,
                      batch: int = EVAL_BATCH, tta: str = "none") -> torch.Tensor:
    """Identity features ``[N, D]`` (float32, CPU) of uint8 ``[N, C, H, W]`` images.

    ``tta="flip"``: the mean of the features of each face and its mirror, exactly what
    :class:`~ferkit.inference.Predictor` (and so the app) computes for weights whose card says
    ``tta: flip`` (:func:`~ferkit.inference.merge_flip_outputs`). Why it matters: a threshold
    calibrated on single-view features and applied to averaged ones (which score higher) accepts
    more strangers than its stated false-accept rate.
    """
    from ferkit.evaluation.forward import batched_forward
    from ferkit.models.weights import check_tta, to_model_input

    if check_tta(tta) == "flip":
        return 0.5 * (identity_features(model, images, preprocessing, device, batch)
                      + identity_features(model, images.flip(-1), preprocessing, device, batch))

    def identity(out):
        if out.identity is None:
            from ferkit.models.weights import weights_with

            raise UsageError(f"{type(model).__name__} has no identity feature; verification needs weights that "
                             f"have one: {', '.join(weights_with('identity')) or 'none shipped'}")
        return out.identity

    return batched_forward(model, images, lambda x: to_model_input(x.to(device), preprocessing), batch_size=batch,
                           select=identity).cpu()


def parse_identities(spec: Optional[str], heldout: Optional[list[str]] = None) -> Optional[list[str]]:
    """``--identities``: ``a,b,c``, ``@file`` (one name per line) or ``heldout`` (the weights card's
    ``heldout_identities``: the identities its recipe kept out of training)."""
    if not spec:
        return None
    if spec == "heldout":
        if not heldout:
            raise UsageError("--identities heldout: the weights' card lists no held-out identities "
                             "(heldout_identities); pass the names (a,b,c or @file)")
        names = list(heldout)
    elif spec.startswith("@"):
        from pathlib import Path

        path = Path(spec[1:])
        if not path.is_file():
            raise NotFoundError(f"--identities {spec}: no such file")
        names = [ln.strip() for ln in path.read_text().splitlines()]
    else:
        names = [n.strip() for n in spec.split(",")]
    names = [n for n in names if n]
    if not names:
        raise UsageError(f"--identities {spec!r} names no identity")
    return names


def _is_yale(root) -> bool:
    from ferkit.data.identity import is_yale_root

    return is_yale_root(root)


#: side at which :func:`aligned_face_images` cuts and caches face crops
CANONICAL_CROP_SIDE = 128


def aligned_face_images(paths: Sequence, preprocessing, use_cache: bool = True) -> tuple[torch.Tensor, int]:
    """(uint8 ``[N, C, S, S]`` crops, images without a detected face) cut as the app cuts them.

    Every image goes through :class:`ferkit.face.pipeline.FacePipeline` (detection, face mesh,
    eye alignment to ``preprocessing.alignment``), so a feature is measured on the crops live
    inference feeds it rather than on resized whole frames whose framing no training set had.
    Of several faces the one nearest the image centre is taken (LFW's convention: the named person
    is the centred face); an image without a face falls back to its whole frame, resized, and is
    counted. Cached like decoded datasets (by the files, size, channels and crop style).
    """
    from pathlib import Path

    from ferkit.data.cache import cached_dataset
    from ferkit.data.dataset import FaceDataset
    from ferkit.data.images import read_image, resize_square, to_chw

    import dataclasses

    import torch.nn.functional as F

    files = [Path(p) for p in paths]
    # crops are cut and cached at one canonical side (>= 128) and resized to the net's input on
    # read, so nets of several input sizes share one detection pass (minutes for LFW on a CPU)
    side = max(CANONICAL_CROP_SIDE, int(preprocessing.input_size))
    canonical = dataclasses.replace(preprocessing, input_size=side)

    def build() -> FaceDataset:
        from ferkit.face.pipeline import FacePipeline

        crops, missed = [], 0
        with FacePipeline() as pipe:
            for f in files:
                rgb = read_image(f, grayscale=False)
                faces = pipe.process(rgb, canonical)
                if faces:
                    h, w = rgb.shape[:2]

                    def off_centre(a) -> float:
                        x, y, bw, bh = a.face.box
                        return (x + bw / 2 - w / 2) ** 2 + (y + bh / 2 - h / 2) ** 2

                    crop = min(faces, key=off_centre).crop
                else:
                    missed += 1
                    img = read_image(f, grayscale=preprocessing.grayscale)
                    crop = resize_square(img, side)
                if crop.ndim == 3 and preprocessing.grayscale:
                    crop = crop[..., 0] if crop.shape[2] == 1 else crop.mean(axis=2).astype(np.uint8)
                crops.append(to_chw(np.ascontiguousarray(crop)))
        images = (torch.from_numpy(np.stack(crops)) if crops
                  else torch.zeros(0, preprocessing.channels, side, side, dtype=torch.uint8))
        return FaceDataset(images=images, labels=torch.zeros(len(files), dtype=torch.int64), classes=["face"],
                           paths=[str(f) for f in files], meta={"no_face": missed})

    params = {"files": [str(f.resolve()) for f in files], "size": side,
              "grayscale": preprocessing.grayscale, "alignment": preprocessing.alignment}
    ds = cached_dataset("aligned-faces", params, files, build, use_cache=use_cache)
    images = ds.images
    if side != preprocessing.input_size and len(images):
        size = int(preprocessing.input_size)
        images = F.interpolate(images.float(), size=(size, size), mode="area").round_().clamp_(0, 255).to(torch.uint8)
    return images, int(ds.meta.get("no_face", 0))


def load_verification_images(data, preprocessing, identities: Optional[list[str]] = None, align: bool = False,
                             heldout_subset: bool = False):
    """(FaceDataset with subjects, description): a prepared folder, Yale, or identity folders.

    ``heldout_subset``: ``identities`` is a card's held-out list, which may name identities of
    other training sets ("celeba_subset/07451" while evaluating on Yale): those are skipped.

    ``align``: cut every face with the live face pipeline (:func:`aligned_face_images`) instead of
    resizing whole images (a prepared folder is already aligned and is read as it is).
    """
    from pathlib import Path

    from ferkit.data.identity import load_identity_folders
    from ferkit.data.prepared import is_prepared, load_prepared

    data = Path(data)
    size, gray = preprocessing.input_size, preprocessing.grayscale
    if is_prepared(data):
        ds = load_prepared(data, size=size, grayscale=gray)
        desc = f"prepared (detected + aligned) {ds.meta.get('dataset')} at {data}"
        align = False
    elif _is_yale(data):
        from ferkit.data.yale import load_yale

        ds = load_yale(data, size=size, grayscale=gray)
        desc = f"Yale faces at {data}"
    else:
        ds = load_identity_folders(data, size=size, grayscale=gray)
        desc = f"identity folders at {data}"
    if ds.subjects is None:
        raise UsageError(f"{data}: the dataset has no identity labels")
    if identities is not None:
        names = ds.subject_names or ds.classes
        index = {n: i for i, n in enumerate(names)}
        # recipes record names as "<set>/<identity>" when they train on several sets
        identities = [n if n in index or "/" not in n else n.rsplit("/", 1)[1] for n in identities]
        missing = [n for n in identities if n not in index]
        if missing and heldout_subset:
            # a card's held-out list spans several training sets; keep those of this dataset
            identities = [n for n in identities if n in index]
            if not identities:
                raise UsageError(f"--identities heldout: none of the card's held-out identities is in {data}")
            missing = []
        if missing:
            raise UsageError(f"--identities: {len(missing)} name(s) not in {data}: {', '.join(missing[:5])}"
                             + (" ..." if len(missing) > 5 else ""))
        keep = torch.isin(ds.subjects, torch.tensor([index[n] for n in identities]))
        ds = ds.subset(keep)
        desc += f", restricted to {len(identities)} named identities"
    if align:
        images, missed = aligned_face_images(ds.paths, preprocessing)
        ds.images = images
        desc += (f", faces detected and aligned ({preprocessing.alignment} crop style, {missed} of {len(ds)} "
                 "without a face: whole frame)")
    else:
        desc += " (whole images resized)" if not is_prepared(data) else ""
    return ds, desc


@dataclass
class _Pairs:
    """The images of a verification run and its pairs (indices into ``images``), with how they were made."""

    images: torch.Tensor
    first: np.ndarray
    second: np.ndarray
    same: np.ndarray
    folds: np.ndarray
    desc: str
    protocol: str
    n_images: int
    n_ids: Optional[int]
    across_expressions: bool


def _pairs_from_file(pairs_file: Any, data: Any, prep: Any, align: bool, across_expressions: Optional[bool]) -> _Pairs:
    """The pairs of an LFW-style ``pairs.txt`` and their images (whole, or detected and aligned)."""
    from ferkit.data.images import read_images
    from ferkit.data.lfw import find_images_root, read_pairs

    if across_expressions:
        raise UsageError("--across-expressions draws Yale A pairs; it does not apply to a --pairs file")
    pairs = read_pairs(pairs_file, images_root=find_images_root(data))
    paths = sorted({p for pair in pairs for p in (pair.first, pair.second)})
    where = {p: i for i, p in enumerate(paths)}
    if align:
        images, missed = aligned_face_images(paths, prep)
        framing = f"faces detected and aligned ({prep.alignment} crop style, {missed} of {len(paths)} without a face)"
    else:
        images = read_images(paths, grayscale=prep.grayscale, size=prep.input_size)
        framing = "whole images resized"
    folds = np.array([p.fold for p in pairs])
    desc = (f"LFW pairs {pairs_file} ({len(set(folds.tolist()))} folds), images {find_images_root(data)}, "
            f"{framing}")
    protocol = ("pairs file: threshold chosen on the other folds, accuracy on each fold"
                if len(set(folds.tolist())) > 1 else
                "pairs file with one fold: accuracy at the best threshold on the same pairs (optimistic)")
    return _Pairs(images, np.array([where[p.first] for p in pairs]), np.array([where[p.second] for p in pairs]),
                  np.array([p.same for p in pairs]), folds, desc, protocol, len(paths), None, bool(across_expressions))


def _drawn_pairs(data: Any, prep: Any, names: Any, heldout_subset: bool, align: bool,
                 across_expressions: Optional[bool], n_pairs: int, seed: int, n_folds: int) -> _Pairs:
    """Balanced pairs drawn from an identity folder (on Yale A by default across expression conditions)."""
    ds, desc = load_verification_images(data, prep, names, align=align, heldout_subset=heldout_subset)
    yale = _is_yale(data)
    if across_expressions is None:
        across_expressions = yale
    conditions_note = None
    if across_expressions:
        from ferkit.data.yale import yale_conditions

        if not yale:
            raise UsageError("--across-expressions needs a Yale A folder (subjectNN.<condition> files): only "
                             "there are the conditions known")
        conds = yale_conditions(ds.paths)
        keep = torch.tensor([c in YALE_EXPRESSIONS for c in conds])
        ds = ds.subset(keep)
        conds = [c for c in conds if c in YALE_EXPRESSIONS]
        first, second, same, folds = draw_cross_condition_pairs(ds.subjects, conds, n_pairs, seed=seed,
                                                                n_folds=n_folds)
        conditions_note = ("across expressions: the two images of every pair show different conditions of "
                           f"{', '.join(YALE_EXPRESSIONS)}")
    else:
        first, second, same, folds = draw_balanced_pairs(ds.subjects, n_pairs, seed=seed, n_folds=n_folds)
    protocol = (f"balanced pairs drawn with seed {seed} ({n_folds} folds): threshold chosen on the other "
                "folds, accuracy on each fold")
    if conditions_note:
        protocol += f"; {conditions_note}"
    return _Pairs(ds.images, first, second, same, folds, desc, protocol, len(ds),
                  int(torch.unique(ds.subjects).numel()), bool(across_expressions))


def run_verification(weights, data, pairs_file=None, n_pairs: int = 6000, seed: int = 0,
                     identities: Optional[str] = None, device: str = "auto", n_folds: int = 10,
                     align: bool = False, across_expressions: Optional[bool] = None,
                     far: Optional[float] = None) -> tuple[dict, VerificationResult]:
    """The whole protocol for ``--weights``/``--checkpoint`` on ``data``: (summary dict, result).

    ``across_expressions`` (Yale A only; None = on for Yale): every pair shows two different
    expression conditions (:data:`YALE_EXPRESSIONS`). ``far``: also calibrate a threshold at this
    false-accept rate (:func:`calibrate_far`); the summary then holds ``far_calibration``.
    """
    from ferkit.models.weights import load_weights

    loaded = load_weights(weights, device=device)
    prep = loaded.weights.preprocessing
    # fail before reading any data when the model has no identity feature at all
    probe = torch.zeros(1, prep.channels, prep.input_size, prep.input_size, dtype=torch.uint8)
    identity_features(loaded.model, probe, prep, loaded.device)
    if pairs_file is not None:
        pairs = _pairs_from_file(pairs_file, data, prep, align, across_expressions)
    else:
        pairs = _drawn_pairs(data, prep, parse_identities(identities, loaded.weights.heldout_identities),
                             identities == "heldout", align, across_expressions, n_pairs, seed, n_folds)
    images, first, second, same, folds = pairs.images, pairs.first, pairs.second, pairs.same, pairs.folds
    desc, protocol, n_images, n_ids = pairs.desc, pairs.protocol, pairs.n_images, pairs.n_ids
    across_expressions = pairs.across_expressions
    tta = loaded.weights.tta
    feats = identity_features(loaded.model, images, prep, loaded.device, tta=tta)
    scores = pair_scores(feats, first, second)
    result = evaluate_pairs(scores, same, folds)
    summary = {"weights": loaded.weights.name, "source": loaded.weights.source,
               "architecture": loaded.weights.architecture, "data": desc, "protocol": protocol,
               "similarity": "cosine of ModelOutput.identity" + (" averaged with the mirrored face's (the card's "
                                                                  "flip TTA, as the app computes it)"
                                                                  if tta == "flip" else ""),
               "tta": tta, "images": n_images, "identities": n_ids,
               "feature_dim": int(feats.shape[1]), "across_expressions": bool(across_expressions),
               "aligned": bool(align), **result.summary()}
    if far is not None:
        summary["far_calibration"] = calibrate_far(scores, same, folds, far).summary()
    shipped = loaded.weights.identity_threshold
    if shipped is not None:  # what the card's own threshold does on these pairs (what the app would decide)
        accept = scores >= float(shipped)
        summary["card_threshold"] = {"threshold": float(shipped), "far": float(accept[~same].mean()),
                                     "tar": float(accept[same].mean()),
                                     "accuracy": float((accept == same).mean())}
    return summary, result
