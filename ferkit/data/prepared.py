"""``ferkit prepare``: detect, align and crop a whole dataset once, into a compact resumable cache.

On-disk format of a prepared folder ``DST`` (version 1):

* ``DST/manifest.json`` -- written first: ``{"format": "ferkit-prepared", "version": 1, "dataset",
  "source", "options", "classes", "subject_names" (or null), "preprocessing": {"input_size",
  "grayscale", "alignment"}, "detect", "on_no_face", "chunk_size", "n_samples", "n_chunks",
  "samples_sha256", "meta"}``. ``samples_sha256`` hashes the planned file list with labels and
  subjects, so a rerun with other options or changed data refuses to mix chunks.
* ``DST/chunk-NNNNN.pt`` -- one per ``chunk_size`` planned samples, each written atomically
  (temp file + rename): ``{"images": uint8 [n, C, H, W], "labels": int64 [n], "subjects": int64 [n]
  or None, "paths": [n], "scores": float [n], "start", "end", "status": [end - start]}`` where
  ``status`` has one entry per planned sample: ``ok`` (face found and aligned), ``whole`` (no face;
  the whole image was used, the default for data that already is cropped), ``no_face`` (dropped),
  ``unreadable`` (dropped).
* ``DST/summary.json`` -- written last: counts per status, the files without a face or unreadable,
  wall time.

An interrupted run leaves complete chunks only; rerunning the same command skips them.
:func:`load_prepared` returns the kept images as one :class:`FaceDataset`.

The crop is made by :func:`ferkit.face.align.align_face` on the faces of
:meth:`ferkit.face.pipeline.FacePipeline.detect` -- the same calls live inference makes. When an
image holds several faces the largest is taken (the dataset's subject is the one nearest the
camera).
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, TextIO, Union

import numpy as np
import torch

from ferkit.data.dataset import FaceDataset, concat
from ferkit.data.errors import DataError
from ferkit.data.index import DatasetIndex
from ferkit.utils.io import atomic_torch_save, atomic_write_text

FORMAT = "ferkit-prepared"
VERSION = 1
STATUSES = ("ok", "whole", "no_face", "unreadable")


def _samples_hash(index: DatasetIndex) -> str:
    h = hashlib.sha256()
    for s in index.samples:
        h.update(f"{Path(s.path).resolve()}\0{s.label}\0{s.subject}\n".encode())
    return h.hexdigest()


def chunk_path(dst: Path, i: int) -> Path:
    return dst / f"chunk-{i:05d}.pt"


class Progress:
    """A one-line progress bar on a terminal stream (rewritten in place), plain lines otherwise."""

    #: seconds before a rate and an eta are shown: the first items pay for warm-up (detector,
    #: model) and made a 6-second run open with "0.8 img/s eta 9:26"
    SETTLE_S = 2.0

    def __init__(self, total: int, label: str, stream: Optional[TextIO] = None, unit: str = "img") -> None:
        self.total, self.label, self.unit = total, label, unit
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.monotonic()
        self.last = 0.0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, done: int, extra: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < (0.2 if self.tty else 5.0):
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 else 0.0
        frac = done / self.total if self.total else 1.0
        bar = "#" * int(frac * 24)
        speed = (f"{rate:.1f} {self.unit}/s eta {int(eta) // 60}:{int(eta) % 60:02d}"
                 if elapsed >= self.SETTLE_S or done >= self.total else "measuring speed")
        line = f"{self.label} [{bar:<24}] {done}/{self.total} ({frac:.0%}) {speed} {extra}"
        self.stream.write(("\r" + line) if self.tty else (line + "\n"))
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _process_chunk(index: DatasetIndex, start: int, end: int, pipeline: Any, preprocessing: Any,
                   detect: bool, on_no_face: str, subject_pos: Optional[dict[str, int]]) -> dict[str, Any]:
    from ferkit.data.images import read_image
    from ferkit.face.align import align_face, whole_image_face

    images, labels, subjects, paths, scores, status = [], [], [], [], [], []
    dropped: list[list[str]] = []
    size, gray = preprocessing.input_size, preprocessing.grayscale
    for s in index.samples[start:end]:
        try:
            rgb = read_image(s.path, grayscale=False)
        except DataError:
            status.append("unreadable")
            dropped.append([str(s.path), "unreadable"])
            continue
        aligned = None
        if detect:
            faces = pipeline.detect(rgb)
            if faces:
                best = max(faces, key=lambda f: f.box[2] * f.box[3])
                aligned = align_face(rgb, best, size, gray, preprocessing.alignment)
        if aligned is None and (not detect or on_no_face == "whole"):
            aligned = whole_image_face(rgb, size, gray)
            status.append("whole" if detect else "ok")
        elif aligned is None:
            status.append("no_face")
            dropped.append([str(s.path), "no_face"])
            continue
        else:
            status.append("ok")
        images.append(np.ascontiguousarray(aligned.crop.transpose(2, 0, 1)))
        labels.append(s.label)
        if subject_pos is not None:
            subjects.append(subject_pos[s.subject])  # type: ignore[index]
        paths.append(str(s.path))
        scores.append(float(aligned.face.score))
    c = 1 if gray else 3
    return {
        "images": torch.from_numpy(np.stack(images)) if images else torch.zeros((0, c, size, size), dtype=torch.uint8),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "subjects": torch.tensor(subjects, dtype=torch.int64) if subject_pos is not None else None,
        "paths": paths, "scores": scores, "start": start, "end": end, "status": status,
        "dropped": dropped,
    }


def prepare_dataset(index: DatasetIndex, dst: Union[str, Path], preprocessing: Any, source: str = "",
                    options: Optional[dict[str, Any]] = None, detect: bool = True, on_no_face: Optional[str] = None,
                    chunk_size: int = 256, progress: bool = True, overwrite: bool = False,
                    pipeline_factory: Optional[Callable[[], Any]] = None,
                    on_chunk: Optional[Callable[[int], None]] = None) -> dict[str, Any]:
    """Write ``index`` into ``dst`` as a prepared folder (see the module docstring); resumes.

    ``on_no_face``: ``"whole"`` keeps the whole image when no face is found, ``"drop"`` leaves it
    out; default: ``whole`` when the dataset already is cropped, else ``drop``. Returns the summary.
    """
    dst = Path(dst)
    on_no_face = on_no_face or ("whole" if index.cropped else "drop")
    if on_no_face not in {"whole", "drop"}:
        raise ValueError("on_no_face must be 'whole' or 'drop'")
    n_chunks = max(1, (len(index) + chunk_size - 1) // chunk_size)
    manifest = {
        "format": FORMAT, "version": VERSION, "dataset": index.name, "source": source,
        "options": options or {}, "classes": list(index.classes), "subject_names": index.subject_names(),
        "preprocessing": {"input_size": preprocessing.input_size, "grayscale": preprocessing.grayscale,
                          "alignment": preprocessing.alignment},
        "detect": detect, "on_no_face": on_no_face, "chunk_size": chunk_size, "n_samples": len(index),
        "n_chunks": n_chunks, "samples_sha256": _samples_hash(index), "meta": index.meta,
    }
    mpath = dst / "manifest.json"
    if mpath.is_file():
        old = json.loads(mpath.read_text())
        same = {k: old.get(k) for k in ("samples_sha256", "preprocessing", "detect", "on_no_face", "chunk_size")} == \
               {k: manifest[k] for k in ("samples_sha256", "preprocessing", "detect", "on_no_face", "chunk_size")}
        if not same and not overwrite:
            raise DataError(mpath, "this folder holds a different preparation (other data or options)",
                            hint="choose another DST or pass --overwrite")
        if not same:
            for f in dst.glob("chunk-*.pt"):
                f.unlink()
            (dst / "summary.json").unlink(missing_ok=True)
    dst.mkdir(parents=True, exist_ok=True)
    atomic_write_text(mpath, json.dumps(manifest, indent=1, default=str) + "\n")

    names = manifest["subject_names"]
    subject_pos = {n: i for i, n in enumerate(names)} if names is not None else None
    bar = Progress(len(index), f"prepare {index.name}") if progress else None
    t0 = time.monotonic()
    pipeline = None
    done_before = 0
    try:
        for i in range(n_chunks):
            start, end = i * chunk_size, min(len(index), (i + 1) * chunk_size)
            if chunk_path(dst, i).is_file():
                done_before += end - start
                if bar:
                    bar.update(end, "(resumed)")
                continue
            if pipeline is None and detect:
                if pipeline_factory is not None:
                    pipeline = pipeline_factory()
                else:
                    from ferkit.face.pipeline import FacePipeline

                    pipeline = FacePipeline(max_faces=5, min_confidence=0.5)
            chunk = _process_chunk(index, start, end, pipeline, preprocessing, detect, on_no_face, subject_pos)
            atomic_torch_save(chunk, chunk_path(dst, i))
            if on_chunk is not None:
                on_chunk(i)
            if bar:
                bar.update(end, force=True)
    finally:
        if pipeline is not None and hasattr(pipeline, "close"):
            pipeline.close()
        if bar:
            bar.close()
    summary = summarize(dst)
    summary["wall_time_s"] = round(time.monotonic() - t0, 2)
    summary["resumed_samples"] = done_before
    atomic_write_text(dst / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary


def _read_manifest(dst: Path) -> dict[str, Any]:
    mpath = dst / "manifest.json"
    if not mpath.is_file():
        raise DataError(mpath, "not a prepared dataset (no manifest.json)", hint="run `ferkit prepare DATASET SRC DST`")
    manifest = json.loads(mpath.read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise DataError(mpath, f"unsupported prepared format {manifest.get('format')} v{manifest.get('version')}")
    return manifest


def _chunks(dst: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for i in range(manifest["n_chunks"]):
        p = chunk_path(dst, i)
        if not p.is_file():
            raise DataError(p, f"prepared dataset is incomplete ({i} of {manifest['n_chunks']} chunks)",
                            hint="rerun the same `ferkit prepare` command to resume")
        out.append(torch.load(p, map_location="cpu", weights_only=True))
    return out


def summarize(dst: Union[str, Path]) -> dict[str, Any]:
    dst = Path(dst)
    manifest = _read_manifest(dst)
    counts = {s: 0 for s in STATUSES}
    dropped: dict[str, list[str]] = {"no_face": [], "unreadable": []}
    for chunk in _chunks(dst, manifest):
        for st in chunk["status"]:
            counts[st] += 1
        for path, st in chunk.get("dropped", []):
            dropped[st].append(path)
    return {"dataset": manifest["dataset"], "total": manifest["n_samples"], "found": counts["ok"],
            "whole_image": counts["whole"], "no_face": counts["no_face"], "unreadable": counts["unreadable"],
            "kept": counts["ok"] + counts["whole"], "no_face_files": dropped["no_face"],
            "unreadable_files": dropped["unreadable"]}


def is_prepared(path: Union[str, Path]) -> bool:
    return (Path(path) / "manifest.json").is_file()


def load_prepared(dst: Union[str, Path], size: Optional[int] = None, grayscale: Optional[bool] = None) -> FaceDataset:
    """A prepared folder as one :class:`FaceDataset` (meta: dataset, preprocessing, summary counts).

    ``size`` / ``grayscale`` convert the stored crops when a recipe needs another input (area
    resampling; gray -> RGB repeats the channel, RGB -> gray uses the ITU-R 601 weights as OpenCV).
    """
    dst = Path(dst)
    manifest = _read_manifest(dst)
    parts = []
    for chunk in _chunks(dst, manifest):
        parts.append(FaceDataset(images=chunk["images"], labels=chunk["labels"], classes=list(manifest["classes"]),
                                 subjects=chunk["subjects"], paths=list(chunk["paths"]),
                                 subject_names=manifest["subject_names"]))
    ds = concat(parts)
    summary = json.loads((dst / "summary.json").read_text()) if (dst / "summary.json").is_file() else {}
    ds.meta = {"dataset": manifest["dataset"], "prepared": str(dst), "source": manifest["source"],
               "preprocessing": manifest["preprocessing"], **manifest.get("meta", {}),
               "summary": {k: summary.get(k) for k in ("total", "found", "whole_image", "no_face", "unreadable")}}
    return convert_images(ds, size, grayscale)


def convert_images(ds: FaceDataset, size: Optional[int] = None, grayscale: Optional[bool] = None) -> FaceDataset:
    """``ds`` with images resized to ``size`` and/or converted to 1 / 3 channels (None = keep)."""
    import torch.nn.functional as F

    x = ds.images
    if grayscale is True and x.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        x = (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    elif grayscale is False and x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    if size is not None and tuple(x.shape[2:]) != (size, size):
        mode = "area" if x.shape[2] > size else "bilinear"
        kwargs = {} if mode == "area" else {"align_corners": False}
        x = F.interpolate(x.float(), size=(size, size), mode=mode, **kwargs).round().clamp(0, 255).to(torch.uint8)
    if x is ds.images:
        return ds
    ds.images = x
    return ds
