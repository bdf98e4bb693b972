"""Time the face pipeline's stages on images: ``python -m ferkit.face.latency IMAGE... [--repeat 20]``.

Prints, per image and detector range (auto / near / far): faces found, detection alone, detection
plus face mesh, alignment of every face to a 48x48 gray crop, and the whole ``process`` call;
medians over ``--repeat`` runs after one warm-up (graph creation excluded).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from ferkit.data.images import read_image
from ferkit.face.align import align_face
from ferkit.face.pipeline import FacePipeline
from ferkit.models.weights import Preprocessing


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args(argv)
    pre = Preprocessing(input_size=48, grayscale=True, alignment="fer2013")
    for path in args.images:
        rgb = read_image(path, grayscale=False)
        for sel in ("auto", "near", "far"):
            with FacePipeline(model_selection=sel, landmarks=False) as fast:
                det = _median_ms(lambda: fast.detect(rgb), args.repeat)
                n_det = len(fast.detect(rgb))
            with FacePipeline(model_selection=sel) as full:
                faces = full.detect(rgb)
                mesh = _median_ms(lambda: full.detect(rgb), args.repeat)
                align = _median_ms(lambda: [align_face(rgb, f, 48, True, "fer2013") for f in faces], args.repeat)
                proc = _median_ms(lambda: full.process(rgb, pre), args.repeat)
            print(f"{path.name} {rgb.shape[1]}x{rgb.shape[0]} {sel:>4}: faces {n_det} (with mesh {len(faces)}); "
                  f"detect {det:.1f} ms, detect+mesh {mesh:.1f} ms, align all {align:.2f} ms, process {proc:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
