"""Yale Face Database A: flat files ``subjectNN.<condition>`` (GIF without extension), 15 people x 11.

Conditions: centerlight, glasses, happy, leftlight, noglasses, normal, rightlight, sad, sleepy,
surprised, wink. The original archive names one centre-light image ``subject01.gif``; it is read
as ``centerlight``. Frames are 320x243 with the face in the middle.

``label="subject"`` (identity classes) or ``label="condition"`` (the 11 conditions as classes;
happy/sad/sleepy/surprised/normal are the expression ones). Subjects are always filled.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Union

from ferkit.data.dataset import FaceDataset
from ferkit.data.errors import DataError
from ferkit.data.index import DatasetIndex, Sample, load_index

YALE_CONDITIONS = ["centerlight", "glasses", "happy", "leftlight", "noglasses", "normal", "rightlight", "sad",
                   "sleepy", "surprised", "wink"]
_NAME = re.compile(r"^subject(\d+)\.([A-Za-z]+)$")


def index_yale(root: Union[str, Path], label: str = "subject") -> DatasetIndex:
    if label not in {"subject", "condition"}:
        raise ValueError("label must be 'subject' or 'condition'")
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "Yale folder is missing", hint="expected subjectNN.<condition> files")
    entries: list[tuple[Path, str, str]] = []
    for f in sorted(root.iterdir()):
        if not f.is_file() or f.name.startswith("."):
            continue
        m = _NAME.match(f.name)
        if not m:
            if f.name.lower().startswith("subject"):
                raise DataError(f, "file name is not subjectNN.<condition>")
            continue  # README and the like
        cond = yale_condition(f)
        if cond not in YALE_CONDITIONS:
            raise DataError(f, f"unknown Yale condition {cond!r}", hint=f"expected {', '.join(YALE_CONDITIONS)}")
        entries.append((f, f"subject{int(m.group(1)):02d}", cond))
    if not entries:
        raise DataError(root, "no subjectNN.<condition> files")
    subjects = sorted({s for _, s, _ in entries})
    if label == "subject":
        classes = subjects
        samples = [Sample(f, subjects.index(s), s) for f, s, _ in entries]
    else:
        classes = [c for c in YALE_CONDITIONS if any(c == e[2] for e in entries)]
        samples = [Sample(f, classes.index(c), s) for f, s, c in entries]
    return DatasetIndex("yale", classes, samples, meta={"label": label})


def yale_condition(path: Union[str, Path]) -> str:
    """The condition of a Yale A file from its name (``subject01.gif`` is ``centerlight``)."""
    name = Path(path).name
    m = _NAME.match(name)
    if not m:
        raise DataError(Path(path), "file name is not subjectNN.<condition>")
    cond = m.group(2).lower()
    return "centerlight" if cond == "gif" else cond


def yale_conditions(paths: list[str]) -> list[str]:
    """:func:`yale_condition` of every path (e.g. ``FaceDataset.paths`` of :func:`load_yale`)."""
    return [yale_condition(p) for p in paths]


def load_yale(root: Union[str, Path], size: int = 48, grayscale: bool = True, label: str = "subject",
              use_cache: bool = True) -> FaceDataset:
    return load_index(index_yale(root, label), size=size, grayscale=grayscale, use_cache=use_cache)
