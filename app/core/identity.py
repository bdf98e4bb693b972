"""Which identity feature decides "same person?", and the decision itself (Qt-free).

Why a separate choice from the expression model: an identity decision is only as trustworthy as
the feature's measured verification quality and a threshold calibrated at a stated false-accept
rate. The library picks the shipped feature with the best LFW metric and a calibrated threshold
(:func:`ferkit.models.weights.enrolment_identity_weights`); the selected expression model's own
identity output is used only when its card carries such a calibration; otherwise there is no
identity decision at all and no box ever shows a name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional

from ferkit.models.weights import Weights, enrolment_identity_weights, get_weights

#: shown on a box whose best similarity is below the threshold
UNKNOWN = "unknown"


@dataclass(frozen=True)
class IdentityChoice:
    """The identity feature in use (``key`` None: none is calibrated, so no decisions are made)."""

    key: Optional[str] = None
    threshold: Optional[float] = None
    far: Optional[float] = None
    tar: Optional[float] = None
    calibration: str = ""
    #: "enrolment" (the library's best calibrated identity weights) or "model" (the expression model's own)
    origin: str = ""
    #: why there is no identity decision, in words for the panel (empty when ``key`` is set)
    reason: str = ""
    #: measured (pictures enrolled, share of a person's other photos named right) from the card's
    #: ``lfw_enrolment_named_right_<n>`` metrics (``scripts/enrolment_lfw.py``); empty when not measured
    enrolment_rates: tuple[tuple[int, float], ...] = ()

    @property
    def active(self) -> bool:
        return self.key is not None and self.threshold is not None


@dataclass(frozen=True)
class IdentityMatch:
    """The decision for one face: ``name`` None means "unknown" (below the threshold)."""

    name: Optional[str]
    similarity: float
    #: the enrolled name closest to the face, kept for the panel's table (never drawn as a decision)
    nearest: str

    @property
    def label(self) -> str:
        return self.name if self.name is not None else UNKNOWN


#: card metric of the share of a person's other photos named right when enrolled from <n> pictures
ENROLMENT_RATE_METRIC = "lfw_enrolment_named_right_"


def enrolment_rates(metrics: Mapping[str, Any]) -> tuple[tuple[int, float], ...]:
    """(pictures enrolled, rate) pairs of a card's :data:`ENROLMENT_RATE_METRIC` keys, fewest pictures first."""
    out = []
    for key, value in metrics.items():
        tail = key[len(ENROLMENT_RATE_METRIC):] if key.startswith(ENROLMENT_RATE_METRIC) else ""
        if tail.isdigit() and isinstance(value, (int, float)):
            out.append((int(tail), float(value)))
    return tuple(sorted(out))


def _from_card(key: str, weights: Weights, origin: str) -> IdentityChoice:
    return IdentityChoice(key=key, threshold=float(weights.identity_threshold), far=weights.identity_far,
                          tar=weights.identity_tar, calibration=weights.identity_calibration, origin=origin,
                          enrolment_rates=enrolment_rates(weights.metrics or {}))


NO_FEATURE = ("No calibrated identity feature is installed: no shipped identity weights carry a threshold set "
              "at a stated false-accept rate, so faces are never named. Enrolled pictures are kept and compared "
              "once one is installed.")


def choose_identity(primary_key: Optional[str], primary_weights: Optional[Weights], primary_has_identity: bool,
                    best: Optional[Callable[[], Optional[str]]] = None) -> IdentityChoice:
    """The library's calibrated identity weights, else the expression model's own calibrated feature, else none.

    ``best`` names the enrolment identity weights (default: the library's ranking, looked up at call time).
    """
    name = (best or enrolment_identity_weights)()
    if name is not None:
        try:
            weights = get_weights(name)
        except (OSError, ValueError) as exc:
            return IdentityChoice(reason=f"The identity weights '{name}' cannot be read ({exc}); faces are never named.")
        if weights.identity_calibrated:
            return _from_card(name, weights, "enrolment")
    if primary_key and primary_weights is not None and primary_has_identity and primary_weights.identity_calibrated:
        return _from_card(primary_key, primary_weights, "model")
    return IdentityChoice(reason=NO_FEATURE)


def decide(similarities: Mapping[str, float], choice: Optional[IdentityChoice]) -> Optional[IdentityMatch]:
    """The closest enrolled name if its similarity reaches the threshold, else "unknown"; None without a decision."""
    if not similarities or choice is None or not choice.active:
        return None
    nearest, sim = max(similarities.items(), key=lambda kv: kv[1])
    return IdentityMatch(nearest if sim >= float(choice.threshold) else None, float(sim), nearest)


def rematch(faces: Iterable[Any], gallery: Any, choice: Optional[IdentityChoice]) -> int:
    """Similarities and decision of already analysed faces against the gallery as it is *now*.

    Why: a result keeps the similarities of the moment it was analysed; after enrolling more
    pictures (or removing a name) the Inspect rows and the Identity table showed the old ones until
    the folder was opened again. Each face keeps its identity feature, so only cosines are redone
    (no model runs). ``faces``: objects with ``identity``, ``similarities`` and ``match`` (TrackedFace);
    ``gallery``: an :class:`app.core.enrolment.EnrolmentStore`; ``choice``: the identity feature the
    faces were described with. Returns how many faces were re-matched.
    """
    if choice is None or not choice.active:
        return 0
    n = 0
    for face in faces:
        if face.identity is None:
            continue
        face.similarities = gallery.similarities(face.identity, choice.key)
        face.match = decide(face.similarities, choice)
        n += 1
    return n


def describe(choice: IdentityChoice) -> str:
    """One plain line for the panel: which weights, the threshold, the false-accept rate it was set at."""
    if not choice.active:
        return choice.reason or NO_FEATURE
    origin = ("the best calibrated identity feature shipped" if choice.origin == "enrolment"
              else "the selected model's own identity feature")
    far = f" at a false-accept rate of {choice.far * 100:g} %" if choice.far is not None else ""
    tar = f" (true-accept rate there {choice.tar * 100:.1f} %)" if choice.tar is not None else ""
    where = f", calibrated on {choice.calibration}" if choice.calibration else ""
    return (f"Identity weights: {choice.key} ({origin}). Same person when cosine similarity ≥ "
            f"{choice.threshold:.3f}, threshold set{far}{tar}{where}; below it a face is '{UNKNOWN}'.")
