"""Measure a crop style from a dataset's own crops: where do the eyes sit, how far apart?

Reproduce the constants in :mod:`ferkit.face.align` with e.g.::

    python -m ferkit.face.calibrate ../shared/data/ferplus/FER2013Train --n 300
    python -m ferkit.face.calibrate ../shared/data/ckplus48/CK+48 --n 300
    python -m ferkit.face.calibrate ../shared/data/identity/celeba_subset --n 300

Each crop (already a face, 48x48 or 128x128) is upscaled to ``--side`` pixels (cubic), padded by
half its side on every edge (edge replication, so the detector sees a face in context rather than
a face filling the frame, which BlazeFace misses), and run through :class:`FacePipeline`. The eye
centres of the best face are mapped back to fractions of the original crop side. Images are
taken in sorted order with a fixed stride so the sample spreads over the set and is repeatable.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from ferkit.data.images import IMAGE_EXTENSIONS, read_image
from ferkit.face.pipeline import FacePipeline


def eye_fractions(pipeline: FacePipeline, gray_or_rgb: np.ndarray, side: int = 192
                  ) -> Optional[tuple[float, float, float, float]]:
    """(mid x, mid y, eye distance, eye-line angle in degrees) as fractions of the crop side, or None."""
    h, w = gray_or_rgb.shape[:2]
    big = cv2.resize(gray_or_rgb, (side, side), interpolation=cv2.INTER_CUBIC)
    if big.ndim == 2:
        big = cv2.cvtColor(big, cv2.COLOR_GRAY2RGB)
    pad = side // 2
    padded = cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    faces = [f for f in pipeline.detect(padded) if f.source == "mesh"]
    if not faces:
        return None
    f = faces[0]
    le = (np.array(f.left_eye) - pad) / side
    re = (np.array(f.right_eye) - pad) / side
    mid = (le + re) / 2
    d = re - le
    return float(mid[0]), float(mid[1]), float(np.hypot(*d)), float(np.degrees(np.arctan2(d[1], d[0])))


def sample_files(root: Path, n: int) -> list[Path]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise SystemExit(f"no images under {root}")
    stride = max(1, len(files) // n)
    return files[::stride][:n]


def calibrate(root: Path, n: int = 300, side: int = 192) -> dict:
    files = sample_files(root, n)
    rows = []
    with FacePipeline(max_faces=1, min_confidence=0.5) as pipeline:
        for f in files:
            r = eye_fractions(pipeline, read_image(f, grayscale=False), side)
            if r is not None:
                rows.append(r)
    a = np.array(rows) if rows else np.zeros((0, 4))
    return {"root": str(root), "sampled": len(files), "found": len(rows), "upscaled_side": side,
            "eye_center_x": [round(float(a[:, 0].mean()), 4), round(float(a[:, 0].std()), 4)] if rows else None,
            "eye_center_y": [round(float(a[:, 1].mean()), 4), round(float(a[:, 1].std()), 4)] if rows else None,
            "eye_distance": [round(float(a[:, 2].mean()), 4), round(float(a[:, 2].std()), 4)] if rows else None,
            "eye_angle_deg": [round(float(a[:, 3].mean()), 2), round(float(a[:, 3].std()), 2)] if rows else None}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path)
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--side", type=int, default=192, help="upscaled crop side in pixels (48 x 4 = 192)")
    args = p.parse_args(argv)
    print(json.dumps(calibrate(args.root, args.n, args.side), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
