"""Expression class names across datasets: one canonical spelling per class.

FER+ says "happiness", FER2013 "happy", CK+ "happy" beside "anger", others "surprised" or
"fearful". Matching a model's classes to a dataset's (``ferkit eval``), a judge's to a synthesis
model's (``ferkit eval-synthesis``) and every name the CLI and the app print go through
:func:`canonical`, so a class is matched and shown the same way whichever data named it.
"""
from __future__ import annotations

#: dataset spellings -> canonical class names (the FER+ / TFE-JL names)
SYNONYMS = {"happy": "happiness", "angry": "anger", "sad": "sadness", "surprised": "surprise",
            "fearful": "fear", "disgusted": "disgust", "neutrality": "neutral", "scared": "fear",
            "contemptuous": "contempt"}


def canonical(name: str) -> str:
    """``"Happy"`` -> ``"happiness"``; a name without a synonym is lower-cased and kept."""
    n = name.strip().lower()
    return SYNONYMS.get(n, n)
