"""Expression names across datasets: FER+ says "happiness", FER2013 "happy", CK+ "happy"/"anger".

Comparison of models trained on different datasets must compare meanings, not spellings, so
agreement is decided on canonical names; the bars keep each model's own class names.
"""
from __future__ import annotations

_CANONICAL = {
    "angry": "anger", "anger": "anger",
    "happy": "happiness", "happiness": "happiness", "joy": "happiness",
    "sad": "sadness", "sadness": "sadness",
    "surprise": "surprise", "surprised": "surprise",
    "fear": "fear", "fearful": "fear", "afraid": "fear",
    "disgust": "disgust", "disgusted": "disgust",
    "contempt": "contempt",
    "neutral": "neutral",
}

#: more classes than this: the weights are not an expression classifier (e.g. an identity net)
MAX_EXPRESSION_CLASSES = 12


def canonical(label: str) -> str:
    return _CANONICAL.get(label.strip().lower(), label.strip().lower())


def is_expression_classifier(classes: list[str]) -> bool:
    return len(classes) <= MAX_EXPRESSION_CLASSES
