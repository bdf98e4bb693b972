"""Inspection results to CSV / JSON, one row (object) per face, nothing rounded away.

Class names are the app's canonical display names (``happiness``, whichever dataset's spelling the
model was trained with), the same ones the bars show; the identity column is the thresholded
decision (a name or ``unknown``), never just the nearest name.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

from ferkit.utils.io import atomic_write_text

from app.core.analyzer import FrameResult


def empty_record(path: str, note: str) -> dict[str, Any]:
    """The row of an image without faces (or that could not be read), saying why."""
    return {"path": path, "face": None, "box": None, "detection_score": None, "whole_image": False,
            "models": {}, "similarity": {}, "identity": None, "note": note}


def result_records(path: str, result: FrameResult) -> list[dict[str, Any]]:
    """Plain dicts of one analysed image: path, face, box, label and scores per model, similarities, identity."""
    records = []
    for face in result.faces:
        rec: dict[str, Any] = {
            # the number the UI shows ("#1"), not the 0-based detection index
            "path": path, "face": face.track_id or face.index + 1, "box": list(face.box),
            "detection_score": face.det_score,
            "whole_image": face.whole_image, "models": {}, "similarity": dict(face.similarities),
            "identity": None if face.match is None else face.match.label}
        for name, scores in face.scores.items():
            rec["models"][name] = {"label": scores.classes[int(scores.raw.argmax())], "scores": scores.as_dict()}
        records.append(rec)
    if not result.faces:
        records.append(empty_record(path, "no face found"))
    return records


def to_json(records: Sequence[dict[str, Any]]) -> str:
    return json.dumps({"results": list(records)}, indent=1) + "\n"


def to_csv(records: Sequence[dict[str, Any]]) -> str:
    """Wide CSV: fixed columns, then ``<model>:<class>`` score columns and ``similarity:<name>``."""
    score_cols: list[str] = []
    sim_cols: list[str] = []
    for rec in records:
        for model, m in rec["models"].items():
            for cls in m["scores"]:
                col = f"{model}:{cls}"
                if col not in score_cols:
                    score_cols.append(col)
        for name in rec["similarity"]:
            col = f"similarity:{name}"
            if col not in sim_cols:
                sim_cols.append(col)
    models = sorted({m for rec in records for m in rec["models"]})
    header = ["path", "face", "x", "y", "w", "h", "detection_score", "whole_image"] + \
        [f"{m}:label" for m in models] + score_cols + sim_cols + ["identity", "note"]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    for rec in records:
        box = rec["box"] or [None] * 4
        row: list[Any] = [rec["path"], rec["face"], *box, rec["detection_score"], rec["whole_image"]]
        row += [rec["models"].get(m, {}).get("label", "") for m in models]
        for col in score_cols:
            model, cls = col.split(":", 1)
            row.append(rec["models"].get(model, {}).get("scores", {}).get(cls, ""))
        for col in sim_cols:
            row.append(rec["similarity"].get(col.split(":", 1)[1], ""))
        row += [rec.get("identity") or "", rec.get("note", "")]
        writer.writerow(row)
    return buf.getvalue()


def save_records(records: Sequence[dict[str, Any]], path: Path) -> Path:
    path = Path(path)
    text = to_csv(records) if path.suffix.lower() == ".csv" else to_json(records)
    atomic_write_text(path, text)
    return path
