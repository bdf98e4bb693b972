"""Enrolled identities: a name, the face picture it came from, and its identity feature per model.

Identity features of different models live in different spaces, so a feature is stored per
weights entry; when the identity weights in use change (or a calibrated one is installed where
there was none) the feature is recomputed from the stored face picture
(:func:`app.core.analyzer.refresh_enrolments`). That is why a face can be enrolled without any
feature: the picture is what is kept. Saved as a JSON index plus an ``.npz`` of face pictures in
the user's config folder, written atomically.
"""
from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ferkit.utils.io import atomic_write_bytes, atomic_write_text

INDEX_NAME = "enrolments.json"
FACES_NAME = "enrolment_faces.npz"


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


@dataclass
class Enrolment:
    name: str
    #: RGB face picture with a margin (enough for the detector to find the face again)
    face: np.ndarray
    #: identity feature per weights key
    features: dict[str, np.ndarray] = field(default_factory=dict)


class EnrolmentStore:
    """Thread-safe list of enrolments (the GUI adds, the inference worker reads)."""

    def __init__(self, folder: Optional[Path] = None) -> None:
        self.folder = Path(folder) if folder else None
        self._lock = threading.Lock()
        self._items: list[Enrolment] = []

    # ---- edits -------------------------------------------------------------------------------
    def add(self, name: str, face: np.ndarray, model_key: Optional[str] = None,
            feature: Optional[np.ndarray] = None) -> Enrolment:
        """Enrol ``face`` under ``name``, with the feature of ``model_key`` when one was computed."""
        name = name.strip()
        if not name:
            raise ValueError("an enrolment needs a name")
        features = {} if model_key is None or feature is None else \
            {model_key: np.asarray(feature, dtype=np.float32).ravel()}
        item = Enrolment(name, np.ascontiguousarray(face, dtype=np.uint8), features)
        with self._lock:
            self._items.append(item)
        return item

    def remove(self, name: str) -> int:
        with self._lock:
            before = len(self._items)
            self._items = [e for e in self._items if e.name != name]
            return before - len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def items(self) -> list[Enrolment]:
        with self._lock:
            return list(self._items)

    def names(self) -> list[str]:
        seen: list[str] = []
        for e in self.items():
            if e.name not in seen:
                seen.append(e.name)
        return seen

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def counts(self) -> list[tuple[str, int]]:
        """(name, number of pictures) in enrolment order: what the Identity panel lists."""
        counts: dict[str, int] = {}
        for e in self.items():
            counts[e.name] = counts.get(e.name, 0) + 1
        return list(counts.items())

    # ---- features -----------------------------------------------------------------------------
    def missing(self, model_key: str) -> list[Enrolment]:
        return [e for e in self.items() if model_key not in e.features]

    def fill(self, model_key: str, compute: Callable[[np.ndarray], Optional[np.ndarray]]) -> int:
        """Compute this model's feature for enrolments that lack it; returns how many were filled."""
        n = 0
        for e in self.missing(model_key):
            feat = compute(e.face)
            if feat is not None:
                with self._lock:
                    e.features[model_key] = np.asarray(feat, dtype=np.float32).ravel()
                n += 1
        return n

    def similarities(self, feature: np.ndarray, model_key: str) -> dict[str, float]:
        """Best cosine similarity to each enrolled name (several pictures of a name: the closest)."""
        out: dict[str, float] = {}
        for e in self.items():
            ref = e.features.get(model_key)
            if ref is None or ref.shape != np.asarray(feature).ravel().shape:
                continue
            s = cosine(feature, ref)
            if e.name not in out or s > out[e.name]:
                out[e.name] = s
        return out

    # ---- persistence -----------------------------------------------------------------------
    def save(self, folder: Optional[Path] = None) -> Path:
        folder = Path(folder or self.folder or ".")
        folder.mkdir(parents=True, exist_ok=True)
        items = self.items()
        faces = {f"face_{i}": e.face for i, e in enumerate(items)}
        buf = io.BytesIO()
        np.savez_compressed(buf, **faces)
        atomic_write_bytes(folder / FACES_NAME, buf.getvalue())
        index = {"version": 1, "identities": [
            {"name": e.name, "face": f"face_{i}",
             "features": {k: [float(x) for x in v] for k, v in e.features.items()}}
            for i, e in enumerate(items)]}
        atomic_write_text(folder / INDEX_NAME, json.dumps(index, indent=1) + "\n")
        self.folder = folder
        return folder / INDEX_NAME

    @classmethod
    def load(cls, folder: Path) -> "EnrolmentStore":
        """Read a saved store; a missing folder gives an empty store, a damaged file a clear error."""
        folder = Path(folder)
        store = cls(folder)
        index_path = folder / INDEX_NAME
        if not index_path.exists():
            return store
        try:
            index = json.loads(index_path.read_text())
            with np.load(folder / FACES_NAME) as faces:
                for entry in index["identities"]:
                    store._items.append(Enrolment(
                        str(entry["name"]), np.array(faces[entry["face"]], dtype=np.uint8),
                        {k: np.asarray(v, dtype=np.float32) for k, v in entry.get("features", {}).items()}))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"the enrolment file {index_path} is damaged ({exc}); "
                             "remove it (and enrolment_faces.npz beside it) to start afresh") from exc
        return store


def picture_enrolment(analyzer: Any, picture: np.ndarray, what: str = "the picture"
                      ) -> tuple[np.ndarray, Optional[str], Optional[np.ndarray]]:
    """(face picture kept, identity weights key, identity feature) of the largest face in ``picture``.

    The one path by which a still picture is enrolled, in the app (``From images…``) and in
    ``scripts/enrolment_lfw.py``, so the LFW numbers the Identity panel quotes are measured on what the
    app stores. ``analyzer`` is a :class:`app.core.analyzer.FrameAnalyzer` (its full still-image
    detector); raises :class:`app.core.sources.SourceError` in words when no face is found.
    """
    from app.core.analyzer import face_picture, identity_of_picture
    from app.core.sources import SourceError

    dets = list(analyzer.pipeline.detect(picture))
    if not dets:
        raise SourceError(f"No face was found in {what}; pick a picture where the face is visible.")
    det = max(dets, key=lambda d: d.box[2] * d.box[3])
    pic = face_picture(picture, det.box)
    handle = analyzer.identity_handle
    if handle is None:
        return pic, None, None
    return pic, handle.key, identity_of_picture(analyzer, handle, pic)


#: pictures a guided live enrolment takes of the tracked face
GUIDED_PICTURES = 5


@dataclass
class GuidedCapture:
    """Several pictures of one tracked face from live video, at different moments (Qt-free).

    Why: one photo misses most of a person's other photos (LFW: a single enrolment photo is
    matched at about the card's true-accept rate, under half), while the best of several pictures
    of different moments and poses matches far more (``scripts/enrolment_lfw.py``). A picture is
    kept only ``min_gap_s`` after the previous one and only when its identity feature is not a
    near copy of one already kept (a still head on a paused-looking stream adds nothing). The
    capture ends with ``wanted`` pictures, after ``timeout_s``, or when the face has been gone
    for ``lost_s``; whatever was taken is then enrolled.
    """

    name: str
    track_id: int
    started: float
    wanted: int = GUIDED_PICTURES
    min_gap_s: float = 0.6
    #: a picture whose feature is at least this similar (cosine) to a kept one is a near copy
    max_similarity: float = 0.985
    timeout_s: float = 20.0
    lost_s: float = 3.0
    #: (face picture, identity key, feature) per picture kept
    pictures: list[tuple[np.ndarray, Optional[str], Optional[np.ndarray]]] = field(default_factory=list)
    last_kept: float = float("-inf")
    last_seen: float = 0.0

    def __post_init__(self) -> None:
        self.last_seen = self.started

    def offer(self, picture: Callable[[], np.ndarray], key: Optional[str], feature: Optional[np.ndarray],
              now: float) -> bool:
        """The tracked face seen at ``now``; True when its picture (made by ``picture()``) was kept."""
        self.last_seen = now
        if self.complete or now - self.last_kept < self.min_gap_s:
            return False
        if feature is not None and any(f is not None and cosine(feature, f) >= self.max_similarity
                                       for _p, _k, f in self.pictures):
            return False
        self.pictures.append((picture(), key, None if feature is None else np.asarray(feature, np.float32).ravel()))
        self.last_kept = now
        return True

    @property
    def complete(self) -> bool:
        return len(self.pictures) >= self.wanted

    def finished(self, now: float) -> bool:
        """Enough pictures, out of time, or the face gone too long."""
        return self.complete or now - self.started >= self.timeout_s or now - self.last_seen >= self.lost_s

    def progress(self) -> str:
        return (f"Taking pictures of {self.name}: {len(self.pictures)} of {self.wanted}. Keep the face in view and "
                "turn the head a little, change the expression.")


#: from this many enrolled pictures on, the panel says that strangers get named more often
STRANGER_WARNING_PICTURES = 10


def enrolment_advice(counts: Sequence[tuple[str, int]], tar: Optional[float], far: Optional[float],
                     rates: Sequence[tuple[int, float]] = ()) -> str:
    """What to expect from the enrolled pictures and when to add more, in words for the Identity panel.

    ``tar``/``far``: the identity card's true-accept rate at its false-accept rate (a single picture
    compared with a single picture); ``rates``: measured (pictures enrolled, share of a person's
    other photos named right) from the card, e.g. ``[(1, 0.47), (3, 0.70), (5, 0.78)]``.
    """
    few = [name for name, n in counts if n == 1]
    if not counts:
        return ""
    parts = []
    if tar is not None:
        at = f" at a {far * 100:g} % false-accept rate" if far is not None else ""
        parts.append(f"From one picture, expect about {tar * 100:.0f} % of a person's other photos to be "
                     f"recognised (the identity weights' measured true-accept rate{at}).")
    if rates:
        measured = ", ".join(f"{n} picture{'s' if n != 1 else ''}: {r * 100:.0f} %" for n, r in rates)
        parts.append(f"Measured on LFW, share of other photos named right — {measured}.")
    total = sum(n for _name, n in counts)
    if far is not None and total >= STRANGER_WARNING_PICTURES:
        parts.append(f"{total} pictures are enrolled: the {far * 100:g} % false-accept rate holds per picture "
                     "compared, so the more pictures (and people) enrolled, the more often a stranger gets a name.")
    if few:
        who = ", ".join(few[:3]) + (" …" if len(few) > 3 else "")
        parts.append(f"{who} {'has' if len(few) == 1 else 'have'} only one picture: enrol more (Enrol selected face "
                     f"on live video takes {GUIDED_PICTURES} over a few seconds; or From images…, several photos "
                     "of different days and poses).")
    return " ".join(parts)
