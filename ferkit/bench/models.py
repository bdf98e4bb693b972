"""Per-model inference speed: per-face latency, batch-1 latency and batch-64 throughput, per engine.

The models are the shipped weights (``resources/weights``); an architecture with no shipped weights
is measured freshly built with its registered defaults (speed does not depend on weight values,
and the JSON says ``"trained": false``).

Two kinds of figures:

- ``per_face_ms`` (shipped weights): one uint8 face crop through :class:`~ferkit.inference.Predictor`
  (preprocessing included, one intra-op thread, as the live loop runs it) for each engine:
  ``torch``, ``onnx`` and ``onnx-int8`` (int8 where calibration crops are available), without TTA
  and with the card's TTA (what the app runs).
- the network alone on random normalised input: latency at batch 1 with ``threads`` (1) and
  throughput at batch 64 with ``batch_threads`` (all cores: bigger batches may use more).
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from ferkit.bench.stats import summary, time_calls
from ferkit.inference import intra_op_threads
from ferkit.models.weights import Preprocessing, Weights, list_weights, load_weights

#: per-call budget: a slow model gets fewer repeats / a smaller throughput batch, never minutes
LATENCY_REPEAT = 30
LATENCY_MAX_S = 2.0
THROUGHPUT_RUNS = 3
THROUGHPUT_BATCH = 64
THROUGHPUT_MAX_BATCH_S = 3.0


@dataclass
class BenchModel:
    label: str
    architecture: str
    model: nn.Module
    weights: Weights
    trained: bool


def _fresh(architecture: str) -> BenchModel:
    from ferkit.models.registry import create_model

    model = create_model(architecture).eval()
    size = int(getattr(model, "input_size", None) or 48)
    channels = int(getattr(model, "in_channels", None) or 1)
    prep = Preprocessing(input_size=size, grayscale=channels == 1)
    classes = [f"c{i}" for i in range(int(getattr(model, "num_classes", 7)))]
    w = Weights(name=f"{architecture} (untrained)", architecture=architecture, classes=classes, preprocessing=prep)
    return BenchModel(w.name, architecture, model, w, trained=False)


def bench_models_list(names: Optional[list[str]] = None) -> list[BenchModel]:
    """Shipped weights (all, or ``names``), plus untrained builds of architectures nothing ships.

    Paper-size networks meant for GPU training (registered with ``cpu_sized=False``) are measured only
    when named (``--models fersnet``): one of them alone would take most of the 5-minute CPU budget.
    """
    from ferkit.errors import UnknownNameError
    from ferkit.models.registry import list_models, model_info

    out: list[BenchModel] = []
    shipped = list_weights()
    unknown = [n for n in names or [] if n not in shipped and not Path(n).exists() and n not in list_models()]
    if unknown:
        raise UnknownNameError(f"--models {', '.join(unknown)}: neither shipped weights ({', '.join(shipped)}) nor "
                               f"an architecture ({', '.join(m for m in list_models() if not m.startswith('test-'))})")
    for name in names if names is not None else shipped:
        if name in shipped or Path(name).exists():
            lm = load_weights(name, device="cpu")
            out.append(BenchModel(lm.weights.name, lm.weights.architecture, lm.model.eval(), lm.weights, True))
        else:
            out.append(_fresh(name))  # an architecture name
    if names is None:
        covered = {m.architecture for m in out}
        for arch in list_models():
            if arch not in covered and not arch.startswith("test-") and model_info(arch).cpu_sized:
                out.append(_fresh(arch))
    return out


def _input(prep: Preprocessing, batch: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return prep.normalize(torch.rand(batch, prep.channels, prep.input_size, prep.input_size, generator=g)).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(run: Callable[[torch.Tensor, int], Any], prep: Preprocessing, device: torch.device,
             threads: int = 1, batch_threads: Optional[int] = None) -> dict[str, Any]:
    """Latency at batch 1 with ``threads`` and throughput at batch 64 (or what fits the time budget)
    with ``batch_threads`` (default: every core) of ``run(x, threads)``."""
    batch_threads = batch_threads or os.cpu_count() or 1
    x1 = _input(prep, 1, device)

    def once() -> None:
        run(x1, threads)
        _sync(device)

    once()  # first call: graph building / allocation, not part of any figure
    lat = time_calls(once, repeat=LATENCY_REPEAT, warmup=1, max_time_s=LATENCY_MAX_S)
    median_ms = sorted(lat)[len(lat) // 2]
    batch = THROUGHPUT_BATCH
    if median_ms * batch / 1e3 > THROUGHPUT_MAX_BATCH_S:  # keep one batch within the budget
        batch = max(2, int(THROUGHPUT_MAX_BATCH_S * 1e3 / median_ms))
    xb = _input(prep, batch, device)

    def batch_once() -> None:
        run(xb, batch_threads)
        _sync(device)

    batch_ms = time_calls(batch_once, repeat=THROUGHPUT_RUNS, warmup=1, min_calls=THROUGHPUT_RUNS)
    ips = [batch * 1e3 / ms for ms in batch_ms]
    return {"latency_ms_batch1": summary(lat), "latency_threads": threads, "throughput_batch": batch,
            "throughput_threads": batch_threads, "throughput_img_per_s": summary(ips, digits=1)}


def per_face(source: str, engines: tuple[str, ...] = ("torch", "onnx", "onnx-int8"), threads: int = 1,
             calibration: Optional[Path] = None) -> dict[str, Any]:
    """Milliseconds per face crop through ``Predictor`` (preprocessing included), per engine.

    ``ms`` without TTA, ``ms_card_tta`` with the card's TTA (the same when the card has none).
    An engine that cannot run here (no onnxruntime, no calibration crops for int8) gets ``error``.
    """
    from ferkit.inference import Predictor

    out: dict[str, Any] = {}
    for engine in engines:
        try:
            row: dict[str, Any] = {}
            for key, tta in (("ms", "none"), ("ms_card_tta", None)):
                p = Predictor(source, device="cpu", engine=engine, threads=threads, tta=tta, calibration=calibration)
                prep = p.preprocessing
                crop = torch.randint(0, 256, (1, prep.channels, prep.input_size, prep.input_size),
                                     generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
                p.predict_tensor(crop)  # session / allocation warm-up
                row[key] = summary(time_calls(lambda: p.predict_tensor(crop), repeat=LATENCY_REPEAT, warmup=2,
                                              max_time_s=LATENCY_MAX_S))
                row["tta_card"] = p.weights.tta
                row["engine"] = p.engine
            out[engine] = row
        except Exception as exc:  # noqa: BLE001 - one engine failing must not lose the others' figures
            out[engine] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def bench_model(bm: BenchModel, device: torch.device, engines: tuple[str, ...] = ("torch", "onnx"),
                workdir: Optional[Path] = None, threads: int = 1, batch_threads: Optional[int] = None,
                per_face_engines: tuple[str, ...] = (), calibration: Optional[Path] = None) -> dict[str, Any]:
    prep = bm.weights.preprocessing
    row: dict[str, Any] = {"model": bm.label, "architecture": bm.architecture, "trained": bm.trained,
                           "input": [prep.channels, prep.input_size, prep.input_size],
                           "parameters_m": round(sum(p.numel() for p in bm.model.parameters()) / 1e6, 3),
                           "device": str(device)}
    model = bm.model.to(device).eval()
    if per_face_engines and bm.trained and bm.weights.source and device.type == "cpu":
        row["per_face_ms"] = per_face(bm.weights.source, per_face_engines, threads, calibration)
    if "torch" in engines:
        def torch_run(x: torch.Tensor, n: int) -> Any:
            with torch.inference_mode(), intra_op_threads(n):
                return model(x)

        row["torch"] = _measure(torch_run, prep, device, threads, batch_threads)
    if "onnx" in engines:
        try:
            from ferkit.export.onnx import OnnxModel, export_model

            with tempfile.TemporaryDirectory(dir=workdir) as tmp:
                path = Path(tmp) / "model.onnx"
                t = time.perf_counter()
                export_model(bm.model.to("cpu"), bm.weights, path)
                export_s = time.perf_counter() - t
                providers = ["CUDAExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
                import onnxruntime as ort

                if providers[0] not in ort.get_available_providers():
                    providers = ["CPUExecutionProvider"]
                session = OnnxModel(path, threads=threads, providers=providers)
                row["onnx"] = _measure(lambda x, n: session.run(x.cpu().numpy(), threads=n), prep,
                                       torch.device("cpu"), threads, batch_threads)
                row["onnx"]["provider"] = providers[0]
                row["onnx"]["export_s"] = round(export_s, 2)
        except Exception as exc:  # noqa: BLE001 - one model failing to export must not lose the others' figures
            row["onnx"] = {"error": f"{type(exc).__name__}: {exc}"}
        bm.model.to(device)
    if "torch" in row and "onnx" in row and "latency_ms_batch1" in row["onnx"]:
        t, o = row["torch"]["latency_ms_batch1"]["median"], row["onnx"]["latency_ms_batch1"]["median"]
        row["onnx_speedup_batch1"] = round(t / o, 2) if o else None
    return row
