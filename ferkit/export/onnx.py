"""ONNX export of every ferkit classifier, and a runtime that uses it like the torch model.

Why: ONNX Runtime runs these small CNNs several times faster than torch eager at batch 1 on a
CPU (measured for TFE-JL's ResNet: ~0.5 ms vs 2-3 ms), which is what a live per-face loop needs.

What is exported is the *recognition path*: normalised float input ``[B, C, H, W]`` (dynamic
batch) -> ``logits`` and, for identity-capable models, ``identity``. FERSNet's synthesis stream
and gate maps are not part of it (the app uses torch for those). The weights card (classes,
preprocessing, metrics) is embedded as ONNX metadata under ``ferkit.weights``, so an ``.onnx`` file
alone says how to feed it and what its outputs mean.

Export uses the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): the dynamo
exporter needs extra packages that are not part of ferkit's pins. Every export is checked: the
file is run in ONNX Runtime on a random batch and compared with torch (max abs difference).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from ferkit.models.outputs import ModelOutput
from ferkit.models.weights import Preprocessing, Weights, get_weights, load_weights
from ferkit.utils.io import atomic_write_bytes

PathLike = Union[str, Path]
METADATA_KEY = "ferkit.weights"
DEFAULT_OPSET = 17
#: the agreement an export must reach (max abs difference of logits / identity features)
TOLERANCE = 1e-4


def _need_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - both are in the 'onnx' extra
        raise RuntimeError("ONNX export/inference needs the 'onnx' and 'onnxruntime' packages: "
                           "pip install 'ferkit[onnx]'") from exc
    return onnx, onnxruntime


class RecognitionPath(nn.Module):
    """``x -> (logits[, identity])``: the tensors-only view of a ferkit model that ONNX can trace."""

    def __init__(self, model: nn.Module, with_identity: bool):
        super().__init__()
        self.model = model
        self.with_identity = with_identity

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        out: ModelOutput = self.model(x)
        if self.with_identity:
            return out.logits, out.identity
        return out.logits


@dataclass
class ExportResult:
    path: Path
    name: str
    architecture: str
    outputs: list[str]
    input_shape: list[Any]
    max_abs_diff: dict[str, float]
    size_bytes: int


def example_input(prep: Preprocessing, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A normalised random batch shaped like the model's input (uniform images through ``normalize``)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, prep.channels, prep.input_size, prep.input_size, generator=g)
    return prep.normalize(images)


def export_model(model: nn.Module, weights: Weights, out: PathLike, opset: int = DEFAULT_OPSET,
                 identity: Optional[bool] = None, check: bool = True) -> ExportResult:
    """Export ``model`` (eval mode, CPU) with ``weights``' card embedded; verify against torch."""
    onnx, _ = _need_onnx()
    model = model.to("cpu").eval()
    prep = weights.preprocessing
    x = example_input(prep, batch=2)
    with torch.no_grad():
        probe = model(x)
    has_identity = probe.identity is not None
    if identity is None:
        identity = has_identity
    elif identity and not has_identity:
        raise ValueError(f"{weights.name}: the model ({weights.architecture}) has no identity output to export")
    wrapper = RecognitionPath(model, identity).eval()
    outputs = ["logits"] + (["identity"] if identity else [])
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # shape checks in forward() are traced as constants: right for a fixed input size
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # dynamo=False is chosen on purpose (see above)
        torch.onnx.export(wrapper, (x,), buf, input_names=["input"], output_names=outputs,
                          dynamic_axes={n: {0: "batch"} for n in ["input", *outputs]}, opset_version=opset,
                          do_constant_folding=True, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    card = weights.to_dict()
    card["onnx"] = {"input": "input", "outputs": outputs, "opset": opset, "torch": torch.__version__}
    entry = proto.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps(card)
    proto.producer_name = "ferkit"
    proto.doc_string = f"ferkit {weights.name} ({weights.architecture}): recognition path, normalised input"
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    out = Path(out)
    atomic_write_bytes(out, data)
    diffs = verify(out, model, prep) if check else {}
    bad = {k: v for k, v in diffs.items() if not v <= TOLERANCE}
    if bad:
        raise RuntimeError(f"{out}: ONNX Runtime and torch disagree by {bad} (> {TOLERANCE}); the export is wrong")
    return ExportResult(path=out, name=weights.name, architecture=weights.architecture, outputs=outputs,
                        input_shape=["batch", prep.channels, prep.input_size, prep.input_size],
                        max_abs_diff=diffs, size_bytes=len(data))


def export_weights(name_or_path: PathLike, out: PathLike, opset: int = DEFAULT_OPSET,
                   identity: Optional[bool] = None, check: bool = True) -> ExportResult:
    """Shipped weights name, card or training checkpoint -> ``out`` (.onnx)."""
    loaded = load_weights(name_or_path, device="cpu")
    return export_model(loaded.model, loaded.weights, out, opset=opset, identity=identity, check=check)


@torch.no_grad()
def verify(path: PathLike, model: nn.Module, prep: Preprocessing, batch: int = 3, seed: int = 1) -> dict[str, float]:
    """Max abs difference between ONNX Runtime and torch on a random batch, per output."""
    session = OnnxModel(path)
    x = example_input(prep, batch=batch, seed=seed)
    ref = model.eval()(x)
    got = session(x)
    diffs = {"logits": float((ref.logits.float() - got.logits).abs().max())}
    if got.identity is not None and ref.identity is not None:
        diffs["identity"] = float((ref.identity.float() - got.identity).abs().max())
    return diffs


class OnnxModel:
    """An exported ``.onnx`` file that is called like a ferkit model: ``model(x) -> ModelOutput``.

    ``x`` is the normalised float input (what the torch model takes); the output carries
    ``logits`` and, when exported, ``identity``. ``weights`` is the embedded card (classes,
    preprocessing). ``threads`` defaults to torch's intra-op thread count so torch/ONNX timings
    compare like with like.
    """

    has_gates = False
    has_synthesis = False

    def __init__(self, path: PathLike, threads: Optional[int] = None, providers: Optional[Sequence[str]] = None):
        _, ort = _need_onnx()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no ONNX file at {self.path}; create one with ferkit export-onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=list(providers))
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise ValueError(f"{self.path} was not written by ferkit export-onnx (no '{METADATA_KEY}' metadata)")
        self.weights = Weights.from_dict(json.loads(meta[METADATA_KEY]), source=str(self.path))
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.input_name = self.session.get_inputs()[0].name
        self.has_identity = "identity" in self.outputs
        self.num_classes = len(self.weights.classes)

    @property
    def preprocessing(self) -> Preprocessing:
        return self.weights.preprocessing

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(self.outputs, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})
        return dict(zip(self.outputs, values))

    def __call__(self, x: torch.Tensor, *, return_gates: bool = False) -> ModelOutput:
        if return_gates:
            raise NotImplementedError("the ONNX export holds the recognition path only (no ConvFLU gates); "
                                      "use the torch engine for gate maps")
        res = self.run(x.detach().to("cpu", torch.float32).numpy())
        identity = res.get("identity")
        return ModelOutput(logits=torch.from_numpy(res["logits"]),
                           identity=None if identity is None else torch.from_numpy(identity))

    def eval(self) -> "OnnxModel":  # lets callers treat it like an nn.Module in inference code
        return self


class OnnxClassifier:
    """Predict on uint8 face crops with an ONNX model: same ``predict_tensor`` as the torch Predictor.

    Built from an ``.onnx`` path, or from a weights name / card / checkpoint (exported once into
    the cache folder, keyed by the weights file's content hash, then reused).
    """

    def __init__(self, source: PathLike, threads: Optional[int] = None):
        path = Path(source)
        if path.suffix != ".onnx":
            path = cached_export(source)
        self.model = OnnxModel(path, threads=threads)
        self.weights = self.model.weights
        self.classes = list(self.weights.classes)
        self.preprocessing = self.weights.preprocessing

    def predict_tensor(self, batch_uint8: torch.Tensor) -> ModelOutput:
        """uint8 ``[N, C, H, W]`` crops already at the input size and channel count -> ModelOutput."""
        prep = self.preprocessing
        if batch_uint8.dim() != 4 or batch_uint8.shape[1:] != (prep.channels, prep.input_size, prep.input_size):
            raise ValueError(f"expected uint8 [N, {prep.channels}, {prep.input_size}, {prep.input_size}] crops, "
                             f"got {tuple(batch_uint8.shape)}")
        return self.model(prep.normalize(batch_uint8))

    def predict_scores(self, batch_uint8: torch.Tensor) -> list[dict[str, float]]:
        probs = self.predict_tensor(batch_uint8).probabilities
        return [{c: float(p) for c, p in zip(self.classes, row)} for row in probs]


def _cache_root() -> Path:
    from ferkit.data.cache import cache_dir

    root = cache_dir()
    if root is None:  # caching switched off: still need somewhere to put the file
        import tempfile

        root = Path(tempfile.gettempdir()) / "ferkit-cache"
    return root / "onnx"


def cached_export(name_or_path: PathLike, opset: int = DEFAULT_OPSET) -> Path:
    """The ONNX file of some weights, exported on first use (offline; nothing is downloaded)."""
    weights = get_weights(name_or_path)
    src = Path(weights.source or "")
    blob = src.parent / weights.file if src.suffix == ".json" and weights.file else src
    h = hashlib.sha256()
    h.update(json.dumps(weights.to_dict(), sort_keys=True).encode())
    st = os.stat(blob)
    h.update(f"{blob.resolve()}:{st.st_size}:{st.st_mtime_ns}:{opset}:{torch.__version__}".encode())
    path = _cache_root() / f"{weights.name}-{h.hexdigest()[:16]}.onnx"
    if not path.exists():
        export_weights(name_or_path, path, opset=opset)
    return path


def use_onnx(predictor: Any, threads: Optional[int] = None) -> Any:
    """Switch a :class:`ferkit.inference.Predictor` to ONNX Runtime in place (``--engine onnx``).

    The predictor keeps its weights card, preprocessing and face pipeline; only the network call
    changes (exported once into the cache, then reused). ONNX Runtime runs on the CPU here, so the
    predictor's device becomes CPU. Gate maps and synthesis stay torch-only (a clear error).
    """
    source = predictor.weights.source
    if source is None:
        raise ValueError("these weights have no file to export to ONNX")
    predictor.model = OnnxModel(cached_export(source), threads=threads)
    predictor.device = torch.device("cpu")
    return predictor
