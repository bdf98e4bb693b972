"""Oulu-CASIA NIR&VIS facial expressions as distributed:
``OriginalImg|Aligned/VL|NI/Strong|Weak|Dark/P###/<Emotion>/NNN.jpeg``.

80 subjects x 6 expressions, each a sequence from neutral to apex. Protocol of the papers
(EIFN, FERSNet): visible light (``VL``), strong illumination, the last three frames of each
sequence, 6 classes -> 1,440 images; subjects are the ``P###`` folders.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

from ferkit.data.dataset import FaceDataset
from ferkit.data.errors import DataError
from ferkit.data.images import IMAGE_EXTENSIONS
from ferkit.data.index import DatasetIndex, Sample, load_index
from ferkit.errors import UsageError

OULU_CLASSES = ["Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise"]
VARIANTS = ("OriginalImg", "Aligned")
SPECTRA = ("VL", "NI")
LIGHTS = ("Strong", "Weak", "Dark")


def _resolve(root: Path, variant: str, spectrum: str, light: str) -> Path:
    for base in (root, *(p for p in root.iterdir() if p.is_dir())) if root.is_dir() else ():
        cand = base / variant / spectrum / light
        if cand.is_dir():
            return cand
    if (root / "P001").is_dir() or any(root.glob("P[0-9]*")):
        return root  # already pointing at .../VL/Strong
    raise DataError(root / variant / spectrum / light, "Oulu-CASIA folder not found",
                    hint="expected OriginalImg|Aligned/VL|NI/Strong|Weak|Dark/P###/<Emotion>/*.jpeg")


def index_oulu(root: Union[str, Path], variant: str = "OriginalImg", spectrum: str = "VL", light: str = "Strong",
               frames: int = 3) -> DatasetIndex:
    for val, allowed in ((variant, VARIANTS), (spectrum, SPECTRA), (light, LIGHTS)):
        if val not in allowed:
            raise UsageError(f"{val!r} is not one of {', '.join(allowed)}")
    folder = _resolve(Path(root), variant, spectrum, light)
    lower = {c.lower(): i for i, c in enumerate(OULU_CLASSES)}
    samples: list[Sample] = []
    people = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("P"))
    if not people:
        raise DataError(folder, "no P### subject folders")
    for person in people:
        for emo_dir in sorted(p for p in person.iterdir() if p.is_dir()):
            if emo_dir.name.lower() not in lower:
                raise DataError(emo_dir, f"unknown expression folder {emo_dir.name!r}",
                                hint=f"expected one of {', '.join(OULU_CLASSES)}")
            seq = sorted(p for p in emo_dir.iterdir()
                         if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)
            if len(seq) < frames:
                raise DataError(emo_dir, f"sequence has {len(seq)} frames, protocol needs the last {frames}")
            samples += [Sample(f, lower[emo_dir.name.lower()], person.name) for f in seq[-frames:]]
    return DatasetIndex("oulu", list(OULU_CLASSES), samples,
                        meta={"variant": variant, "spectrum": spectrum, "light": light, "frames": frames},
                        cropped=variant == "Aligned")


def load_oulu(root: Union[str, Path], size: int = 64, grayscale: bool = True, use_cache: bool = True,
              **kwargs: object) -> FaceDataset:
    return load_index(index_oulu(root, **kwargs), size=size, grayscale=grayscale, use_cache=use_cache)  # type: ignore[arg-type]
