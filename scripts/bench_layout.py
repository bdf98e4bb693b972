"""Prints how long the video view's label layout takes per frame (``app.core.layout.place_labels``).

Why a script: the layout runs in the GUI thread on every painted frame, so its cost is frame time
the user sees; run it before and after touching the layout (``git stash`` for the side-by-side).
"""
from __future__ import annotations

import argparse
import random
import time

from app.core.layout import place_labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--frames", type=int, default=200)
    args = parser.parse_args()
    bounds = (0.0, 0.0, 1280.0, 720.0)
    for n in args.faces:
        rng = random.Random(0)
        boxes = [(rng.uniform(0, 1200), rng.uniform(0, 640), 80.0, 80.0) for _ in range(n)]
        sizes = [(160.0, 20.0)] * n
        start = time.perf_counter()
        for _ in range(args.frames):
            place_labels(boxes, sizes, bounds)
        ms = (time.perf_counter() - start) / args.frames * 1e3
        print(f"{n:3d} faces, 1280x720 view: {ms:8.3f} ms per frame")


if __name__ == "__main__":
    main()
