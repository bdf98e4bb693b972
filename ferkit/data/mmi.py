"""MMI facial expression sequences, as frame folders plus one label file.

MMI ships videos with per-session XML metadata; the papers use frames of its 205 labelled
posed sequences (6 basic expressions, 30 subjects, neutral -> apex -> neutral), taking the
*middle* frames, where the apex is. ferkit reads the frames-extracted form:

``<root>/<sequence>/<frame>.png|jpg`` and ``<root>/labels.csv`` with a header and the columns
``sequence,emotion[,subject]``:

* ``sequence``: the frame folder, relative to ``root`` (e.g. ``S001-001`` or ``Sessions/1766``);
* ``emotion``: a name (anger, disgust, fear, happiness, sadness, surprise) or MMI's code 1..6 in
  that order;
* ``subject``: optional; when absent it is taken from a ``S###`` prefix of the sequence name.

``frames`` middle frames (default 3) of each sequence are used.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Union

from ferkit.data.dataset import FaceDataset
from ferkit.data.errors import DataError
from ferkit.data.images import IMAGE_EXTENSIONS
from ferkit.data.index import DatasetIndex, Sample, load_index

MMI_CLASSES = ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]
_ALIASES = {"angry": "anger", "happy": "happiness", "sad": "sadness", "disgusted": "disgust",
            "fearful": "fear", "surprised": "surprise"}
_SUBJECT = re.compile(r"^(S\d+)")


def _emotion(value: str, path: Path, line: int) -> int:
    v = value.strip().lower()
    if v.isdigit():
        code = int(v)
        if not 1 <= code <= 6:
            raise DataError(path, f"emotion code {code} is not in 1..6", line=line)
        return code - 1
    v = _ALIASES.get(v, v)
    if v not in MMI_CLASSES:
        raise DataError(path, f"unknown emotion {value!r}", line=line, hint=f"use one of {', '.join(MMI_CLASSES)} or 1..6")
    return MMI_CLASSES.index(v)


def index_mmi(root: Union[str, Path], frames: int = 3, labels: Union[str, Path, None] = None) -> DatasetIndex:
    root = Path(root)
    label_file = Path(labels) if labels else root / "labels.csv"
    if not label_file.is_file():
        raise DataError(label_file, "MMI label file is missing", hint="write labels.csv: sequence,emotion[,subject]")
    samples: list[Sample] = []
    with open(label_file, newline="") as fh:
        reader = csv.reader(fh)
        header = [h.strip().lower() for h in next(reader, [])]
        if "sequence" not in header or "emotion" not in header:
            raise DataError(label_file, f"header must name 'sequence' and 'emotion', got {header}", line=1)
        si, ei = header.index("sequence"), header.index("emotion")
        ji = header.index("subject") if "subject" in header else None
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise DataError(label_file, f"expected {len(header)} fields, got {len(row)}", line=lineno)
            seq = row[si].strip()
            label = _emotion(row[ei], label_file, lineno)
            subject = row[ji].strip() if ji is not None else ""
            if not subject:
                m = _SUBJECT.match(Path(seq).name)
                if not m:
                    raise DataError(label_file, f"no subject for sequence {seq!r}", line=lineno,
                                    hint="add a subject column or name sequences S###-...")
                subject = m.group(1)
            seq_dir = root / seq
            if not seq_dir.is_dir():
                raise DataError(label_file, f"sequence folder {seq_dir} is missing", line=lineno)
            files = sorted(p for p in seq_dir.iterdir()
                           if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)
            if len(files) < frames:
                raise DataError(seq_dir, f"sequence has {len(files)} frames, protocol needs {frames}")
            start = len(files) // 2 - frames // 2
            samples += [Sample(f, label, subject) for f in files[start:start + frames]]
    if not samples:
        raise DataError(label_file, "no labelled sequences")
    return DatasetIndex("mmi", list(MMI_CLASSES), samples, meta={"frames": frames, "labels": str(label_file)})


def load_mmi(root: Union[str, Path], size: int = 64, grayscale: bool = True, use_cache: bool = True,
             frames: int = 3) -> FaceDataset:
    return load_index(index_mmi(root, frames=frames), size=size, grayscale=grayscale, use_cache=use_cache)
