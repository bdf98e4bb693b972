"""Face verification with identity features: "are these two faces the same person?"

The protocol is LFW's (Huang et al. 2007), which DeepID, Light CNN and EIFN's identity branch
are judged on: score each pair by the cosine similarity of the two identity features, call the
pair "same" when the score reaches a threshold, and choose that threshold on nine of ten folds
before measuring accuracy on the tenth (so the reported accuracy never saw its own threshold).
Threshold-free figures come with it: ROC AUC (probability that a random same-pair scores above
a random different-pair) and the equal error rate (false accepts = false rejects).

When a dataset has no pairs file (identity folders: CelebA subset, ORL, Yale) we draw balanced
pairs with a seed (half same, half different) and run the same 10-fold protocol on them.

Everything here works on plain arrays; :mod:`ferkit.cli.eval_verification` turns a model and a
folder into features and calls :func:`evaluate_pairs`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import torch

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
        raise ValueError(f"--n-pairs {n_pairs} is too small for {n_folds} folds (need at least {2 * n_folds})")
    rng = np.random.default_rng(seed)
    ids, inverse = np.unique(subj, return_inverse=True)
    members = [np.nonzero(inverse == k)[0] for k in range(len(ids))]
    if len(ids) < 2:
        raise ValueError("verification needs at least two identities")
    multi = [m for m in members if len(m) >= 2]
    if not multi:
        raise ValueError("no identity has two images, so no same-identity pair can be drawn")
    available_same = sum(len(m) * (len(m) - 1) // 2 for m in multi)
    n = len(subj)
    available_diff = n * (n - 1) // 2 - sum(len(m) * (len(m) - 1) // 2 for m in members)
    half = min(n_pairs // 2, available_same, available_diff)
    if half < n_folds:
        raise ValueError(f"only {available_same} distinct same-identity pairs exist; need at least {n_folds}")
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


# ---------------------------------------------------------------------------------------------
# from a model and a folder to a result
EVAL_BATCH = 256


def identity_features(model: torch.nn.Module, images: torch.Tensor, preprocessing, device: torch.device,
                      batch: int = EVAL_BATCH) -> torch.Tensor:
    """Identity features ``[N, D]`` (float32, CPU) of uint8 ``[N, C, H, W]`` images."""
    from ferkit.evaluation.forward import batched_forward
    from ferkit.inference import to_model_input

    def identity(out):
        if out.identity is None:
            raise ValueError(f"{type(model).__name__} has no identity feature (ModelOutput.identity is None); "
                             "verification needs an identity-capable model such as deepid, lightcnn9, eifn or tfe-jl")
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
            raise ValueError("--identities heldout: the weights' card lists no held-out identities "
                             "(heldout_identities); pass the names (a,b,c or @file)")
        names = list(heldout)
    elif spec.startswith("@"):
        from pathlib import Path

        path = Path(spec[1:])
        if not path.is_file():
            raise FileNotFoundError(f"--identities {spec}: no such file")
        names = [ln.strip() for ln in path.read_text().splitlines()]
    else:
        names = [n.strip() for n in spec.split(",")]
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"--identities {spec!r} names no identity")
    return names


def _is_yale(root) -> bool:
    from pathlib import Path

    root = Path(root)
    return root.is_dir() and any(p.is_file() and p.name.startswith("subject") for p in root.iterdir()) \
        and not any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir())


def load_verification_images(data, preprocessing, identities: Optional[list[str]] = None):
    """(FaceDataset with subjects, description): a prepared folder, Yale, or identity folders."""
    from pathlib import Path

    from ferkit.data.identity import load_identity_folders
    from ferkit.data.prepared import is_prepared, load_prepared

    data = Path(data)
    size, gray = preprocessing.input_size, preprocessing.grayscale
    if is_prepared(data):
        ds = load_prepared(data, size=size, grayscale=gray)
        desc = f"prepared (detected + aligned) {ds.meta.get('dataset')} at {data}"
    elif _is_yale(data):
        from ferkit.data.yale import load_yale

        ds = load_yale(data, size=size, grayscale=gray)
        desc = f"Yale faces (whole frames resized) at {data}"
    else:
        ds = load_identity_folders(data, size=size, grayscale=gray)
        desc = f"identity folders at {data}"
    if ds.subjects is None:
        raise ValueError(f"{data}: the dataset has no identity labels")
    if identities is not None:
        names = ds.subject_names or ds.classes
        index = {n: i for i, n in enumerate(names)}
        # recipes record names as "<set>/<identity>" when they train on several sets
        identities = [n if n in index or "/" not in n else n.rsplit("/", 1)[1] for n in identities]
        missing = [n for n in identities if n not in index]
        if missing:
            raise ValueError(f"--identities: {len(missing)} name(s) not in {data}: {', '.join(missing[:5])}"
                             + (" ..." if len(missing) > 5 else ""))
        keep = torch.isin(ds.subjects, torch.tensor([index[n] for n in identities]))
        ds = ds.subset(keep)
        desc += f", restricted to {len(identities)} named identities"
    return ds, desc


def run_verification(weights, data, pairs_file=None, n_pairs: int = 6000, seed: int = 0,
                     identities: Optional[str] = None, device: str = "auto", n_folds: int = 10) -> tuple[dict, VerificationResult]:
    """The whole protocol for ``--weights``/``--checkpoint`` on ``data``: (summary dict, result)."""
    from ferkit.models.weights import load_weights

    loaded = load_weights(weights, device=device)
    prep = loaded.weights.preprocessing
    # fail before reading any data when the model has no identity feature at all
    probe = torch.zeros(1, prep.channels, prep.input_size, prep.input_size, dtype=torch.uint8)
    identity_features(loaded.model, probe, prep, loaded.device)
    if pairs_file is not None:
        from ferkit.data.images import read_images
        from ferkit.data.lfw import find_images_root, read_pairs

        pairs = read_pairs(pairs_file, images_root=find_images_root(data))
        paths = sorted({p for pair in pairs for p in (pair.first, pair.second)})
        where = {p: i for i, p in enumerate(paths)}
        images = read_images(paths, grayscale=prep.grayscale, size=prep.input_size)
        first = np.array([where[p.first] for p in pairs])
        second = np.array([where[p.second] for p in pairs])
        same = np.array([p.same for p in pairs])
        folds = np.array([p.fold for p in pairs])
        desc = f"LFW pairs {pairs_file} ({len(set(folds.tolist()))} folds), images {find_images_root(data)}"
        protocol = ("pairs file: threshold chosen on the other folds, accuracy on each fold"
                    if len(set(folds.tolist())) > 1 else
                    "pairs file with one fold: accuracy at the best threshold on the same pairs (optimistic)")
        n_images, n_ids = len(paths), None
    else:
        names = parse_identities(identities, loaded.weights.heldout_identities)
        ds, desc = load_verification_images(data, prep, names)
        images = ds.images
        first, second, same, folds = draw_balanced_pairs(ds.subjects, n_pairs, seed=seed, n_folds=n_folds)
        protocol = (f"balanced pairs drawn with seed {seed} ({n_folds} folds): threshold chosen on the other "
                    "folds, accuracy on each fold")
        n_images, n_ids = len(ds), int(torch.unique(ds.subjects).numel())
    feats = identity_features(loaded.model, images, prep, loaded.device)
    scores = pair_scores(feats, first, second)
    result = evaluate_pairs(scores, same, folds)
    summary = {"weights": loaded.weights.name, "source": loaded.weights.source,
               "architecture": loaded.weights.architecture, "data": desc, "protocol": protocol,
               "similarity": "cosine of ModelOutput.identity", "images": n_images, "identities": n_ids,
               "feature_dim": int(feats.shape[1]), **result.summary()}
    return summary, result
