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
from typing import Callable, Optional

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
