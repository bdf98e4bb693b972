"""Where each face's label goes so that no label hides another label or another face (Qt-free).

Why: in a group photo the labels are wider than the faces; drawn at each box's top-left they
covered each other ("#1 hidden under #2"), and placed only clear of each other, label #1 of
``multi_face.jpg`` still covered face #5's mouth and #3's cheek. Labels are placed one by one,
nearest-to-its-box first: above the box, else below it, else beside it, else inside its top edge,
else the nearest free row above or below, right- or left-aligned with the box; always inside the
picture. The first candidate that covers no face and no placed label wins; only when none exists
(more text than free picture) may a label cover its own face, then another face, never a label
while any free place is left.
"""
from __future__ import annotations

from typing import Iterator, Sequence

#: x, y, width, height
Rect = tuple[float, float, float, float]


def overlaps(a: Rect, b: Rect) -> bool:
    """Interiors intersect (labels that only touch do not hide each other)."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _clamp(x: float, y: float, w: float, h: float, bounds: Rect) -> Rect:
    bx, by, bw, bh = bounds
    return (max(bx, min(x, bx + bw - w)), max(by, min(y, by + bh - h)), w, h)


def _candidates(box: Rect, size: tuple[float, float], bounds: Rect) -> Iterator[Rect]:
    """Places for one label, best first; lazy, because on a live frame the first few usually win
    and the last-resort scan of the whole picture is hundreds of rectangles."""
    x, y, w_box, h_box = box
    w, h = size
    xs = [x, x + w_box - w]  # left-aligned with the box, then right-aligned
    yield from (_clamp(cx, cy, w, h, bounds) for cy in (y - h, y + h_box) for cx in xs)  # above, below
    yield from (_clamp(x + w_box, y, w, h, bounds), _clamp(x - w, y, w, h, bounds))  # beside: right, left
    yield from (_clamp(cx, y, w, h, bounds) for cx in xs)  # inside the top edge
    # then free rows further away, nearest first, in steps of one label height
    steps = int(bounds[3] // max(h, 1.0)) + 1
    for k in range(1, steps + 1):
        for cy in (y - h - k * h, y + h_box + k * h):
            yield from (_clamp(cx, cy, w, h, bounds) for cx in xs)
    # last resort: every row of the picture, scanning across
    for k in range(steps):
        cy = bounds[1] + k * h
        for i in range(int(bounds[2] // max(w / 2, 1.0)) + 1):
            yield _clamp(bounds[0] + i * w / 2, cy, w, h, bounds)


def place_labels(boxes: Sequence[Rect], sizes: Sequence[tuple[float, float]], bounds: Rect) -> list[Rect]:
    """One rectangle per label, in the order of ``boxes``, no two overlapping while space allows.

    ``boxes``: the faces (x, y, w, h); ``sizes``: each label's (width, height); ``bounds``: the
    picture. Labels that cannot all fit (more text than picture) overlap as little as the scan allows.
    """
    order = sorted(range(len(boxes)), key=lambda i: (boxes[i][1], boxes[i][0]))
    placed: dict[int, Rect] = {}
    for i in order:
        others = [b for j, b in enumerate(boxes) if j != i]
        rules = (lambda c: not any(overlaps(c, b) for b in boxes),  # covers no face at all
                 lambda c: not any(overlaps(c, b) for b in others),  # only its own face's edge
                 lambda c: True)  # labels stay readable before faces stay visible
        free = None
        for rule in rules:
            free = next((c for c in _candidates(boxes[i], sizes[i], bounds)
                         if rule(c) and not any(overlaps(c, p) for p in placed.values())), None)
            if free is not None:
                break
        # no free place at all (more text than picture): the best place, overlapping a label
        placed[i] = free if free is not None else next(_candidates(boxes[i], sizes[i], bounds))
    return [placed[i] for i in range(len(boxes))]
