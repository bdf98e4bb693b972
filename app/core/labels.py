"""Expression names across datasets: FER+ says "happiness", FER2013 "happy", CK+ "happy"/"anger".

One canonical display name per class (the library's :func:`ferkit.data.classes.canonical`,
the same mapping ``ferkit eval`` matches datasets with), so bars, box labels, comparison, CSV
and JSON name a class the same way whichever model produced it.
"""
from __future__ import annotations

from typing import Sequence

from ferkit.data.classes import canonical as _library_canonical

#: the expression classes any shipped or trainable model predicts (canonical spelling)
EXPRESSIONS = frozenset({"neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"})


def canonical(label: str) -> str:
    """The display name of a class: ``happy`` -> ``happiness``; unknown names lower-cased and kept."""
    return _library_canonical(label)


def display_classes(classes: Sequence[str]) -> list[str]:
    """A model's class names as the app shows and exports them."""
    return [canonical(c) for c in classes]


def is_expression_classifier(classes: Sequence[str]) -> bool:
    """True when every class is an expression (an identity net's subjects are not: deepid, lightcnn9-identity).

    Decided from the card's class names, not their count, so a small identity net is not taken
    for an expression model and a new expression set with a synonym still is.
    """
    names = display_classes(classes)
    return len(names) >= 2 and all(n in EXPRESSIONS for n in names)
