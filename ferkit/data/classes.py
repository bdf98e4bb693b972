"""Expression class names across datasets: one canonical spelling per class.

FER+ says "happiness", FER2013 "happy", CK+ "happy" beside "anger", others "surprised" or
"fearful". Matching a model's classes to a dataset's (``ferkit eval``), a judge's to a synthesis
model's (``ferkit eval-synthesis``) and every name the CLI and the app print go through
:func:`canonical`, so a class is matched and shown the same way whichever data named it.
"""
from __future__ import annotations

from typing import Sequence

#: dataset spellings -> canonical class names (the FER+ / TFE-JL names)
SYNONYMS = {"happy": "happiness", "angry": "anger", "sad": "sadness", "surprised": "surprise",
            "fearful": "fear", "disgusted": "disgust", "neutrality": "neutral", "scared": "fear",
            "contemptuous": "contempt"}


def canonical(name: str) -> str:
    """``"Happy"`` -> ``"happiness"``; a name without a synonym is lower-cased and kept."""
    n = name.strip().lower()
    return SYNONYMS.get(n, n)


#: the expression classes any shipped or trainable model predicts (canonical spelling)
EXPRESSIONS = frozenset({"neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"})


def display_classes(classes: Sequence[str]) -> list[str]:
    """A model's class names as every output shows them (bars, box labels, CSV, JSON, tables)."""
    return [canonical(c) for c in classes]


def is_expression_classifier(classes: Sequence[str]) -> bool:
    """True when every class is an expression (an identity net's subjects are not: deepid, lightcnn9-identity).

    Decided from the card's class names, not their count, so a small identity net is not taken
    for an expression model and a new expression set with a synonym still is.
    """
    names = display_classes(classes)
    return len(names) >= 2 and all(n in EXPRESSIONS for n in names)
