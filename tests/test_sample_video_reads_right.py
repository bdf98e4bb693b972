"""The demo's promise on its own sample video: the crying start reads sad, the laughing end happy.

Through the real face pipeline (mediapipe detection + alignment) and the default shipped
weights, exactly as the app scores the video; a check of the trained weights, not of the code.
``ferkit-live`` is checked too: the app makes it the default on weak machines.
"""
from __future__ import annotations

from collections import Counter

import cv2
import numpy as np
import pytest

from ferkit.inference import DEFAULT_WEIGHTS, Predictor
from ferkit.paths import samples_dir

VIDEO = samples_dir() / "expressions_pexels_640x360.mp4"
#: the first ~5 s: she cries (hands at her face in part of it); 24 fps
CRYING = list(range(6, 121, 12))
#: the last ~7 s: she laughs
LAUGHING = list(range(300, 471, 17))
SAD = {"sadness", "fear", "sad"}
HAPPY = {"happiness", "happy"}


def _frames(indices: list[int]) -> dict[int, np.ndarray]:
    cap = cv2.VideoCapture(str(VIDEO))
    wanted, out, i = set(indices), {}, 0
    try:
        while len(out) < len(wanted):
            ok, frame = cap.read()
            if not ok:
                break
            if i in wanted:
                out[i] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            i += 1
    finally:
        cap.release()
    assert len(out) == len(wanted), f"could read only {len(out)} of {len(wanted)} frames of {VIDEO}"
    return out


@pytest.fixture(scope="module", params=[DEFAULT_WEIGHTS, "ferkit-live"])
def predictor(request: pytest.FixtureRequest) -> Predictor:
    pytest.importorskip("mediapipe")
    with Predictor(request.param, device="cpu") as p:
        yield p


def _faces(predictor: Predictor, indices: list[int]) -> list:
    faces = []
    for index, rgb in sorted(_frames(indices).items()):
        result = predictor.predict_image(rgb)
        assert len(result.faces) == 1, f"frame {index}: expected her face, found {len(result.faces)}"
        faces.append(result.faces[0])
    return faces


def _mass(face, names: set[str]) -> float:
    return sum(p for c, p in face.scores.items() if c in names)


def test_crying_part_reads_sad(predictor: Predictor) -> None:
    faces = _faces(predictor, CRYING)
    labels = Counter(f.label for f in faces)
    assert sum(n for c, n in labels.items() if c in SAD) >= 0.7 * len(faces), f"crying frames labelled {labels}"
    sad = sum(_mass(f, SAD) for f in faces) / len(faces)
    happy = sum(_mass(f, HAPPY) for f in faces) / len(faces)
    assert sad >= 3 * happy, f"mean sadness+fear {sad:.2f} vs happiness {happy:.2f} on the crying frames"


def test_laughing_part_reads_happy(predictor: Predictor) -> None:
    labels = Counter(f.label for f in _faces(predictor, LAUGHING))
    assert sum(n for c, n in labels.items() if c in HAPPY) >= 0.9 * sum(labels.values()), \
        f"laughing frames labelled {labels}"
