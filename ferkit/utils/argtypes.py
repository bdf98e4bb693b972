"""argparse ``type=`` functions for numbers with a range, shared by every command and recipe.

Why: ``--batch-size 0`` trained with batches of one, ``--lr -1`` reached torch's optimiser and
ended in a traceback after the run folder was made, ``--scale 0`` was quietly read as 1. A value
outside its range is now refused while the command line is parsed, in argparse's own words
("argument --lr: must be > 0, got -1"), before anything runs or is written.
"""
from __future__ import annotations

import argparse
import math
from typing import Callable, Union

Number = Union[int, float]


def _ranged(kind: type, low: Number, *, inclusive: bool, high: Union[Number, None] = None,
            high_inclusive: bool = True) -> Callable[[str], Number]:
    """A parser of finite ``kind`` numbers at or above (``inclusive``) / above ``low``, and at most
    (``high_inclusive``) / below ``high``."""
    bound = f">= {low}" if inclusive else f"> {low}"
    if high is not None:
        bound = f"in [{low}, {high}{']' if high_inclusive else ')'}"
    noun = "a whole number" if kind is int else "a number"

    def parse(text: str) -> Number:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {noun} {bound}, got {text!r}") from None
        below = value < low if inclusive else value <= low
        above = high is not None and (value > high if high_inclusive else value >= high)
        if below or above or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    parse.__name__ = f"{kind.__name__} {bound}"  # what argparse names in its "invalid ... value" fallback
    return parse


#: counts and sizes: batch, epochs, faces, folds, pixels
positive_int = _ranged(int, 1, inclusive=True)
#: fold counts: a split needs two folds at least
fold_count = _ranged(int, 2, inclusive=True)
#: counts where none is meaningful (epochs of FES-DA, background cores)
non_negative_int = _ranged(int, 0, inclusive=True)
#: rates, multipliers, widths, seconds
positive_float = _ranged(float, 0, inclusive=False)
#: loss weights, decays, augmentation ranges, margins
non_negative_float = _ranged(float, 0, inclusive=True)
#: probabilities and fractions
probability = _ranged(float, 0, inclusive=True, high=1)
#: rates that must leave something out (a false-accept rate of 1 sets no threshold)
probability_below_one = _ranged(float, 0, inclusive=True, high=1, high_inclusive=False)
