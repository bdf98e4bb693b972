"""ONNX export of every ferkit classifier, and a runtime that uses it like the torch model.

Why: ONNX Runtime runs these small CNNs several times faster than torch eager at batch 1 on a
CPU (issue 14: TFE-JL 2.2 ms vs 5.4 ms per face, preprocessing included), which is what a live
per-face loop needs; :class:`ferkit.inference.Predictor` therefore uses it by default
(``engine="auto"``) wherever ``onnxruntime`` is installed.

What is exported is the *recognition path*: normalised float input ``[B, C, H, W]`` (dynamic
batch) -> ``logits`` and, for identity-capable models, ``identity``. FERSNet's synthesis stream
and gate maps are not part of it (those stay torch). The weights card (classes, preprocessing,
metrics) is embedded as ONNX metadata under ``ferkit.weights``, so an ``.onnx`` file alone says
how to feed it and what its outputs mean.

Every BatchNormalization is folded away before the file is written (:func:`fold_batch_norms`):
the TorchScript exporter folds BN that follows a Conv, but not BN that feeds a classifier through
a Concat (TFE-JL's two heads), and ONNX Runtime's optimiser does not fold those either; a folded
BN costs nothing at run time.

Export uses the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): the dynamo
exporter needs extra packages that are not part of ferkit's pins. Every export is checked: the
file is run in ONNX Runtime on a random batch and compared with torch (max abs difference).

Exports used for inference are cached (:func:`cached_export`) under ``<cache>/onnx`` (the
``FERKIT_CACHE`` folder, else the checkout's ``cache/`` or ``~/.cache/ferkit``), keyed by a hash
of the weights file's content, the card, ferkit's model code and the exporter's version
(:func:`export_key`), so only the first start after new weights pays the export (seconds); the
folder keeps the most recently used files only.

Optional int8 static quantisation (:func:`quantize_int8`, ``ferkit export-onnx --int8``) uses
``onnxruntime.quantization.quantize_static`` (QDQ format, per-channel int8 weights, uint8
activations) calibrated on real face crops; ``ferkit eval --engine onnx-int8`` measures what it
costs in accuracy.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from ferkit.errors import NotFoundError, UnavailableError, UsageError
from ferkit.models.outputs import ModelOutput
from ferkit.models.weights import Preprocessing, Weights, crops_to_tensor, get_weights, load_weights, to_model_input
from ferkit.utils.io import atomic_write_bytes

PathLike = Union[str, Path]
METADATA_KEY = "ferkit.weights"
DEFAULT_OPSET = 17
#: the agreement an export must reach (max abs difference of logits / identity features)
TOLERANCE = 1e-4
#: bumped whenever the exported graph changes for the same weights (2: BatchNorm folding), so
#: cached exports of an older exporter are not reused
EXPORT_REVISION = 2
#: exports kept in the cache folder (most recently used first); older ones are deleted
CACHE_KEEP = 32
#: calibration crops used for int8 quantisation unless told otherwise
CALIBRATION_SIZE = 500
#: bumped when the int8 recipe changes (2: fully connected layers and the first conv stay float)
INT8_REVISION = 2
#: the most accuracy (points on the validation data it was checked on) an int8 file may lose and
#: still be used by ``engine="auto"`` when shipped beside its weights (``<name>.int8.onnx``)
MAX_INT8_DROP = 0.5


def _need_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:  # both are in the 'onnx' extra
        raise UnavailableError("ONNX export/inference needs the 'onnx' and 'onnxruntime' packages: "
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
    """Export ``model`` (eval mode, CPU) with ``weights``' card embedded, BatchNorm folded; verify against torch."""
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
        raise UsageError(f"{weights.name}: the model ({weights.architecture}) has no identity output to export")
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
    folded = fold_batch_norms(proto)
    card = weights.to_dict()
    card["onnx"] = {"input": "input", "outputs": outputs, "opset": opset, "torch": torch.__version__,
                    "revision": EXPORT_REVISION, "batchnorm_folded": folded}
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


def export_onnx(name_or_path: PathLike, out: PathLike, opset: int = DEFAULT_OPSET,
                identity: Optional[bool] = None, check: bool = True) -> ExportResult:
    """Shipped weights name, card or training checkpoint -> ``out`` (.onnx).

    Not :func:`ferkit.training.export.export_weights`, which turns a training checkpoint into shipped
    weights (card + state dict); this one turns weights into an ONNX Runtime file.
    """
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


# ---- BatchNorm folding ------------------------------------------------------------------------------
def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def fold_batch_norms(proto: Any) -> int:
    """Remove every inference-mode ``BatchNormalization`` from ``proto`` (in place); returns how many.

    A BN is an affine map per channel, ``y = a * x + b``. In order of preference it is folded
    (1) into the Conv or Gemm that produces its input (when nothing else reads that tensor),
    (2) into the Gemm that reads its output, directly or through a channel Concat whose inputs are
    all BNs (TFE-JL's identity and expression heads feeding the classifier), or (3) replaced by a
    constant ``Mul`` + ``Add`` (when the input rank is known). A BN none of these fits is left as
    it is (never seen in ferkit's architectures; the export test checks none remain).
    """
    return _BatchNormFolder(proto).run()


class _BatchNormFolder:
    """One graph's BatchNorm folding (:func:`fold_batch_norms`): the graph lookups every way of
    folding needs, kept in one place, and one method per way, so each can be read on its own."""

    def __init__(self, proto: Any) -> None:
        self.proto = proto
        self.graph = proto.graph
        self.inits = {t.name: t for t in self.graph.initializer}
        self.graph_outputs = {o.name for o in self.graph.output}
        self._counter = itertools.count()

    # -- graph lookups --
    def const(self, name: str) -> Optional[np.ndarray]:
        """The initializer ``name`` as float64, or None when the tensor is computed (not a constant)."""
        from onnx import numpy_helper

        t = self.inits.get(name)
        return None if t is None else numpy_helper.to_array(t).astype(np.float64)

    def consumers(self, tensor: str) -> list[Any]:
        return [n for n in self.graph.node if tensor in n.input]

    def producer(self, tensor: str) -> Optional[Any]:
        return next((n for n in self.graph.node if tensor in n.output), None)

    def new_init(self, base: str, value: np.ndarray) -> str:
        """Add ``value`` (as float32) as a new initializer named after ``base``; returns its name.

        New names, never overwritten ones: a weight may be shared by several nodes."""
        from onnx import numpy_helper

        name = f"{base}_bnfold{next(self._counter)}"
        t = numpy_helper.from_array(value.astype(np.float32), name)
        self.graph.initializer.append(t)
        self.inits[name] = t
        return name

    def affine(self, bn: Any) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """``(a, b)`` of the per-channel map ``y = a * x + b`` a BN computes; None unless its parameters are constant."""
        params = [self.const(n) for n in bn.input[1:5]]
        if len(bn.output) != 1 or any(p is None for p in params):
            return None
        scale, bias, mean, var = params  # type: ignore[misc]
        a = scale / np.sqrt(var + float(_attr(bn, "epsilon", 1e-5)))
        return a, bias - mean * a

    def gemm_ok(self, g: Any) -> bool:
        """A plain ``x @ W (+ c)`` Gemm with constant weights: the only kind whose weights can absorb a BN."""
        return (g.op_type == "Gemm" and _attr(g, "transA", 0) == 0 and float(_attr(g, "alpha", 1.0)) == 1.0
                and float(_attr(g, "beta", 1.0)) == 1.0 and self.const(g.input[1]) is not None
                and (len(g.input) < 3 or not g.input[2] or self.const(g.input[2]) is not None))

    # -- (1) into the layer before --
    def fold_into_producer(self, bn: Any, a: np.ndarray, b: np.ndarray) -> bool:
        """Scale the output channels of the Conv / Gemm that feeds ``bn`` (when ``bn`` is its only reader)."""
        src = self.producer(bn.input[0])
        if src is None or bn.input[0] in self.graph_outputs or len(self.consumers(bn.input[0])) != 1:
            return False
        if src.op_type == "Conv" and self.const(src.input[1]) is not None:
            w = self.const(src.input[1])
            c = self.const(src.input[2]) if len(src.input) > 2 and src.input[2] else np.zeros(w.shape[0])
            if c is None or w.shape[0] != a.size:
                return False
            w2 = w * a.reshape(-1, *([1] * (w.ndim - 1)))
            names = [self.new_init(src.input[1], w2), self.new_init(src.name or "conv_bias", c * a + b)]
        elif self.gemm_ok(src):
            w = self.const(src.input[1])
            trans_b = _attr(src, "transB", 0)
            c = self.const(src.input[2]) if len(src.input) > 2 and src.input[2] else np.zeros(a.size)
            w2 = w * (a[:, None] if trans_b else a[None, :])
            names = [self.new_init(src.input[1], w2),
                     self.new_init(src.name or "gemm_bias", np.broadcast_to(c, a.shape) * a + b)]
        else:
            return False
        del src.input[1:]
        src.input.extend(names)
        src.output[0] = bn.output[0]
        return True

    # -- (2) into the Gemm after --
    def fold_into_gemm(self, bns: list[Any], gemm: Any, feeds: str) -> bool:
        """Absorb ``bns`` (their channels concatenated, in order) into the input rows of ``gemm``, which reads ``feeds``."""
        pieces = [self.affine(bn) for bn in bns]
        if any(p is None for p in pieces) or not self.gemm_ok(gemm) or gemm.input[0] != feeds:
            return False
        a = np.concatenate([p[0] for p in pieces])  # type: ignore[index]
        b = np.concatenate([p[1] for p in pieces])  # type: ignore[index]
        w = self.const(gemm.input[1])
        trans_b = _attr(gemm, "transB", 0)
        if (w.shape[1] if trans_b else w.shape[0]) != a.size:
            return False
        n_out = w.shape[0] if trans_b else w.shape[1]
        c = self.const(gemm.input[2]) if len(gemm.input) > 2 and gemm.input[2] else np.zeros(n_out)
        shift = w @ b if trans_b else b @ w
        w2 = w * (a[None, :] if trans_b else a[:, None])
        names = [self.new_init(gemm.input[1], w2),
                 self.new_init(gemm.name or "gemm_bias", np.broadcast_to(c, (n_out,)) + shift)]
        del gemm.input[1:]
        gemm.input.extend(names)
        return True

    def fold_into_reader(self, bn: Any) -> int:
        """Fold ``bn`` into the Gemm reading its output, directly or through a channel Concat; BNs removed."""
        users = self.consumers(bn.output[0])
        if len(users) != 1 or bn.output[0] in self.graph_outputs:
            return 0
        user = users[0]
        if user.op_type == "Gemm" and self.fold_into_gemm([bn], user, bn.output[0]):
            user.input[0] = bn.input[0]
            self.graph.node.remove(bn)
            return 1
        if user.op_type == "Concat" and _attr(user, "axis", 0) in (1, -1):
            return self.fold_concat_group(user)
        return 0

    def fold_concat_group(self, concat: Any) -> int:
        """Fold every BN feeding a channel ``concat`` into the one Gemm after it (TFE-JL's two heads).

        All or none: the Gemm's input rows are the concatenated channels, so one BN left in front
        of the Concat would leave the others' rows wrongly scaled."""
        group = [self.producer(t) for t in concat.input]
        after = self.consumers(concat.output[0])
        if not (all(g is not None and g.op_type == "BatchNormalization" and len(self.consumers(g.output[0])) == 1
                    and g.output[0] not in self.graph_outputs for g in group)
                and len(after) == 1 and concat.output[0] not in self.graph_outputs
                and self.fold_into_gemm(group, after[0], concat.output[0])):
            return 0
        for i, g in enumerate(group):
            concat.input[i] = g.input[0]
            self.graph.node.remove(g)
        return len(group)

    # -- (3) a constant Mul + Add --
    def replace_with_mul_add(self, left: list[Any]) -> int:
        """Replace each BN of ``left`` whose input rank shape inference knows by ``x * a + b``; how many."""
        from onnx import helper, shape_inference

        graph = self.graph
        ranks: dict[str, int] = {}
        inferred = shape_inference.infer_shapes(self.proto)
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input):
            if vi.type.tensor_type.HasField("shape"):
                ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
        replaced = 0
        for bn in left:
            ab = self.affine(bn)
            rank = ranks.get(bn.input[0])
            if ab is None or rank is None or rank < 2:
                continue
            shape = (-1,) + (1,) * (rank - 2)
            a, b = ab[0].reshape(shape), ab[1].reshape(shape)
            mid = f"{bn.output[0]}_bnscaled"
            i = list(graph.node).index(bn)
            graph.node.remove(bn)
            graph.node.insert(i, helper.make_node("Add", [mid, self.new_init(bn.name or "bn", b)], [bn.output[0]],
                                                  name=f"{bn.name}_add"))
            graph.node.insert(i, helper.make_node("Mul", [bn.input[0], self.new_init(bn.name or "bn", a)], [mid],
                                                  name=f"{bn.name}_mul"))
            replaced += 1
        return replaced

    def drop_unused_initializers(self) -> None:
        """Delete the weights no node reads any more (the BN parameters and the pre-fold weights)."""
        used = {i for n in self.graph.node for i in n.input}
        for t in [t for t in self.graph.initializer if t.name not in used]:
            self.graph.initializer.remove(t)

    def run(self) -> int:
        """Fold every BN by the first way that fits (see :func:`fold_batch_norms`); how many went."""
        folded = 0
        for bn in [n for n in self.graph.node if n.op_type == "BatchNormalization"]:
            if bn not in self.graph.node:  # removed already as part of a Concat group
                continue
            ab = self.affine(bn)
            if ab is None:
                continue
            if self.fold_into_producer(bn, *ab):
                self.graph.node.remove(bn)
                folded += 1
                continue
            folded += self.fold_into_reader(bn)
        left = [n for n in self.graph.node if n.op_type == "BatchNormalization"]
        if left:
            folded += self.replace_with_mul_add(left)
        self.drop_unused_initializers()
        return folded


def batchnorm_count(path_or_proto: Any, optimized: bool = False) -> int:
    """``BatchNormalization`` nodes in an ONNX file, as written or (``optimized``) as ONNX Runtime runs it."""
    onnx, ort = _need_onnx()
    proto = path_or_proto if not isinstance(path_or_proto, (str, Path)) else onnx.load(str(path_or_proto))
    if optimized:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "optimized.onnx"
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            opts.optimized_model_filepath = str(out)
            opts.intra_op_num_threads = 1
            ort.InferenceSession(proto.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
            proto = onnx.load(str(out))
    return sum(n.op_type == "BatchNormalization" for n in proto.graph.node)


# ---- runtime ----------------------------------------------------------------------------------------
class OnnxModel:
    """An exported ``.onnx`` file that is called like a ferkit model: ``model(x) -> ModelOutput``.

    The engine behind :class:`ferkit.inference.Predictor` (``engine="onnx"`` / ``"onnx-int8"`` /
    ``"auto"``), which is the one door for predicting with ONNX Runtime: it picks the file (export
    cache, shipped int8), feeds uint8 crops through the weights' preprocessing and falls back to
    torch. Used on its own only where a given file's forward is what is measured (``ferkit eval``
    of an ``.onnx`` file, the bench).

    ``x`` is the normalised float input (what the torch model takes); the output carries
    ``logits`` and, when exported, ``identity``. ``weights`` is the embedded card (classes,
    preprocessing).

    ``threads``: ONNX Runtime intra-op threads of the default session (1: the live path, a few
    faces per call, where more threads only add hand-over and, on a busy machine, spin-waiting
    threads that collapse latency). A call may ask for another count (``model(x, threads=4)`` for
    a big evaluation batch): each count gets its own session, made on first use.
    """

    has_gates = False
    has_synthesis = False

    def __init__(self, path: PathLike, threads: Optional[int] = 1, providers: Optional[Sequence[str]] = None):
        _, ort = _need_onnx()
        self._ort = ort
        self.path = Path(path)
        if not self.path.is_file():
            raise NotFoundError(f"no ONNX file at {self.path}; create one with ferkit export-onnx")
        self.threads = max(1, int(threads or 1))
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.providers = list(providers)
        self._sessions: dict[int, Any] = {}
        self._lock = threading.Lock()
        try:
            self.session = self.session_for(self.threads)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for a file it cannot read
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"onnxruntime cannot load {self.path} ({reason}); a model written by ferkit "
                             "export-onnx is what --onnx expects") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise UsageError(f"{self.path} was not written by ferkit export-onnx (no '{METADATA_KEY}' metadata)")
        card = json.loads(meta[METADATA_KEY])
        #: the exporter's notes (opset, BN folding, int8 quantisation settings)
        self.export_info: dict[str, Any] = dict(card.get("onnx") or {})
        self.weights = Weights.from_dict(card, source=str(self.path))
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.input_name = self.session.get_inputs()[0].name
        self.has_identity = "identity" in self.outputs
        self.num_classes = len(self.weights.classes)

    @property
    def preprocessing(self) -> Preprocessing:
        return self.weights.preprocessing

    @property
    def quantized(self) -> bool:
        return bool(self.export_info.get("quantization"))

    def session_for(self, threads: int) -> Any:
        """The inference session with ``threads`` intra-op threads (graph optimisations all on)."""
        threads = max(1, int(threads))
        with self._lock:
            session = self._sessions.get(threads)
            if session is None:
                ort = self._ort
                options = ort.SessionOptions()
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
                options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                if threads > 1:  # idle pool threads must sleep, not spin, or a busy machine collapses
                    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                session = self._sessions[threads] = ort.InferenceSession(
                    str(self.path), sess_options=options, providers=self.providers)
            return session

    def run(self, x: np.ndarray, threads: Optional[int] = None) -> dict[str, np.ndarray]:
        session = self.session if threads is None or int(threads) == self.threads else self.session_for(threads)
        values = session.run(self.outputs, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})
        return dict(zip(self.outputs, values))

    def __call__(self, x: torch.Tensor, *, return_gates: bool = False, threads: Optional[int] = None) -> ModelOutput:
        if return_gates:
            raise NotImplementedError("the ONNX export holds the recognition path only (no ConvFLU gates); "
                                      "use the torch engine for gate maps")
        res = self.run(x.detach().to("cpu", torch.float32).numpy(), threads=threads)
        identity = res.get("identity")
        return ModelOutput(logits=torch.from_numpy(res["logits"]),
                           identity=None if identity is None else torch.from_numpy(identity))

    def eval(self) -> "OnnxModel":  # lets callers treat it like an nn.Module in inference code
        return self


# ---- the export cache ---------------------------------------------------------------------------------
def cache_root() -> Path:
    """``<cache>/onnx``: where exports for inference are kept (see the module docstring)."""
    from ferkit.data.cache import cache_dir

    root = cache_dir()
    if root is None:  # caching switched off: still need somewhere to put the file
        root = Path(tempfile.gettempdir()) / "ferkit-cache"
    return root / "onnx"


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    """Content hash of a file, remembered per (path, size, mtime) so a process hashes it once."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def weights_digest(weights: Weights) -> str:
    """What the network computes: the weights file's content, the architecture and its config,
    the classes and the preprocessing (not the card's metrics or notes, which change without it).

    Content, not path or time: copying or touching the weights keeps the digest, changing them does not.
    """
    src = Path(weights.source or "")
    blob = src.parent / weights.file if src.suffix == ".json" and weights.file else src
    if not blob.is_file():
        raise NotFoundError(f"{weights.name}: weights file {blob} not found (nothing to export)")
    what = {"architecture": weights.architecture, "model_cfg": weights.model_cfg, "classes": list(weights.classes),
            "preprocessing": weights.to_dict().get("preprocessing")}
    h = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode())
    h.update(_file_sha256(blob).encode())
    return h.hexdigest()


_CODE_DIGEST: list[str] = []


def _models_code_digest() -> str:
    """Hash of ferkit's model code: an edited architecture must not reuse an export of the old one."""
    if not _CODE_DIGEST:
        h = hashlib.sha256()
        for f in sorted((Path(__file__).resolve().parent.parent / "models").glob("*.py")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
        _CODE_DIGEST.append(h.hexdigest())
    return _CODE_DIGEST[0]


def export_key(weights: Weights, opset: int = DEFAULT_OPSET) -> str:
    """Cache key of an export: :func:`weights_digest`, the model code, the card, opset, torch and exporter."""
    h = hashlib.sha256(f"{weights_digest(weights)}:{_models_code_digest()}:{opset}:{torch.__version__}:"
                       f"{EXPORT_REVISION}".encode())
    h.update(json.dumps(weights.to_dict(), sort_keys=True, default=str).encode())  # the embedded card
    return h.hexdigest()


def _touch_and_prune(path: Path, keep: int = CACHE_KEEP) -> None:
    """Mark ``path`` as just used and delete all but the ``keep`` most recently used exports."""
    try:
        os.utime(path)
        files = sorted(path.parent.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in files[keep:]:
            old.unlink(missing_ok=True)
    except OSError:  # a cache is best effort: another process may be pruning too
        pass


def cached_export(name_or_path: PathLike, opset: int = DEFAULT_OPSET) -> Path:
    """The ONNX file of some weights, exported on first use (offline; nothing is downloaded)."""
    weights = get_weights(name_or_path)
    path = cache_root() / f"{weights.name}-{export_key(weights, opset)[:16]}.onnx"
    if not path.exists():
        export_onnx(name_or_path, path, opset=opset)
    _touch_and_prune(path)
    return path


# ---- int8 static quantisation ---------------------------------------------------------------------
def calibration_files(folder: PathLike, n: int = CALIBRATION_SIZE, seed: int = 0) -> list[Path]:
    """``n`` image files of ``folder`` (recursively), a fixed random sample so a run can be repeated."""
    from ferkit.data.images import expand_image_paths

    files = expand_image_paths([folder])
    if n and len(files) > n:
        pick = np.random.default_rng(seed).choice(len(files), size=n, replace=False)
        files = [files[i] for i in sorted(pick)]
    return files


def calibration_inputs(files: Sequence[Path], prep: Preprocessing) -> np.ndarray:
    """Float32 model inputs ``[N, C, H, W]`` of face-crop images, fed exactly as ``ferkit eval`` feeds them."""
    from ferkit.data.images import read_image

    xs = [to_model_input(crops_to_tensor([read_image(f, grayscale=False)]), prep) for f in files]
    if not xs:
        raise UsageError("no calibration images")
    return torch.cat(xs).numpy().astype(np.float32)


def float_nodes(proto: Any) -> list[str]:
    """Nodes :func:`quantize_int8` keeps in float by default: the fully connected layers and the first conv.

    Why: quantising everything cost TFE-JL 1.8 points on FER2013Valid (87.28 -> 85.46 %, min-max
    calibration; percentile and entropy calibration did no better), while with its three Gemm
    layers in float it lost 0.13 points, and with the first conv too 0.03. Those layers are a
    sliver of the compute (the first conv sees one input channel), so int8 gains little there.
    """
    first_conv = next((n.name for n in proto.graph.node if n.op_type == "Conv"), None)
    heads = [n.name for n in proto.graph.node if n.op_type in ("Gemm", "MatMul")]
    return heads + ([first_conv] if first_conv else [])


def quantize_int8(fp32_onnx: PathLike, out: PathLike, calibration: np.ndarray, method: str = "minmax",
                  note: str = "", exclude: Optional[Sequence[str]] = None,
                  source_digest: Optional[str] = None) -> Path:
    """Static int8 quantisation of a ferkit ONNX file with ``onnxruntime.quantization.quantize_static``.

    QDQ format, per-channel symmetric int8 weights and uint8 activations (the combination ONNX
    Runtime's x86 kernels run fastest, with VNNI where the CPU has it); activation ranges from
    ``calibration`` (normalised model inputs, see :func:`calibration_inputs`) by ``method``
    (``minmax``, ``percentile`` or ``entropy``). ``exclude``: node names left in float (None:
    :func:`float_nodes`, the fully connected layers and the first conv; ``()`` quantises all).
    The weights card travels along, with the quantisation settings under ``onnx.quantization``
    (and ``source_digest``, :func:`weights_digest` of the weights it was made from, so a file
    shipped beside weights that have changed since is not used for them).
    """
    onnx, _ = _need_onnx()
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise UsageError(f"calibration method must be one of {', '.join(methods)}, not {method!r}")
    src = onnx.load(str(fp32_onnx))
    meta = {p.key: p.value for p in src.metadata_props}
    if METADATA_KEY not in meta:
        raise UsageError(f"{fp32_onnx} was not written by ferkit export-onnx")
    input_name = src.graph.input[0].name

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.rewind()

        def get_next(self) -> Optional[dict[str, np.ndarray]]:
            return next(self._it, None)

        def rewind(self) -> None:
            # histogram calibrators need equally shaped batches: one image at a time for those
            step = 64 if method == "minmax" else 1
            self._it: Iterator[dict[str, np.ndarray]] = iter(
                {input_name: calibration[i:i + step]} for i in range(0, len(calibration), step))

    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:  # shape inference + basic graph clean-up, as the quantisation docs advise
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_pre_process(str(fp32_onnx), str(prepared))
        except Exception:  # noqa: BLE001 - pre-processing is an optimisation; quantise the plain file instead
            prepared = Path(fp32_onnx)
        # node names as in the file that is quantised (pre-processing may rename fused nodes)
        exclude = float_nodes(onnx.load(str(prepared))) if exclude is None else list(exclude)
        quantized = Path(tmp) / "int8.onnx"
        extra = {"CalibPercentile": 99.999} if method == "percentile" else {}
        quantize_static(str(prepared), str(quantized), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method], extra_options=extra,
                        nodes_to_exclude=list(exclude) or None)
        proto = onnx.load(str(quantized))
    card = json.loads(meta[METADATA_KEY])
    card.setdefault("onnx", {})["quantization"] = {
        "kind": "static int8 (QDQ, per-channel int8 weights, uint8 activations)", "method": method,
        "float_nodes": list(exclude),
        "calibration_images": int(len(calibration)), "calibration": note,
        "onnxruntime": _need_onnx()[1].__version__, "source_digest": source_digest, "revision": INT8_REVISION}
    set_metadata(proto, card)
    atomic_write_bytes(out, proto.SerializeToString())
    return out


def set_metadata(proto: Any, card: dict[str, Any]) -> None:
    """Replace the embedded weights card of ``proto`` (in place)."""
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(card)


def record_validation(path: PathLike, validation: dict[str, Any]) -> None:
    """Write the measured accuracy of an int8 file (and of its float model) into its metadata."""
    onnx, _ = _need_onnx()
    proto = onnx.load(str(path))
    card = json.loads({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])
    card.setdefault("onnx", {}).setdefault("quantization", {})["validation"] = validation
    set_metadata(proto, card)
    atomic_write_bytes(Path(path), proto.SerializeToString())


def shipped_int8(weights: Weights) -> tuple[Optional[Path], str]:
    """(the int8 file shipped beside ``weights`` that ``engine="auto"`` may use, or None; why / why not).

    Used only when ``<card folder>/<name>.int8.onnx`` exists, was made from exactly these weights
    (``source_digest``), and its recorded validation lost at most :data:`MAX_INT8_DROP` points; and
    never for weights with a calibrated identity threshold (the validation covers expressions,
    while the threshold was set on float identity features).
    """
    src = Path(weights.source or "")
    if src.suffix != ".json":
        return None, "no int8 file is shipped for weights that are not a card"
    if weights.identity_threshold is not None:
        return None, "identity threshold calibrated on float features: int8 is not used"
    path = src.with_name(f"{weights.name}.int8.onnx")
    if not path.is_file():
        return None, f"no {path.name} beside the card"
    onnx, _ = _need_onnx()
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    q = (json.loads(meta.get(METADATA_KEY, "{}")).get("onnx") or {}).get("quantization") or {}
    if q.get("source_digest") != weights_digest(weights):
        return None, f"{path.name} was made from other weights (re-export it)"
    drop = (q.get("validation") or {}).get("drop_points")
    if drop is None or not drop <= MAX_INT8_DROP:
        return None, f"{path.name} has no validation with a drop of at most {MAX_INT8_DROP} points (recorded: {drop})"
    change = f"{drop:.2f} points below float" if drop >= 0 else f"{-drop:.2f} points above float"
    return path, f"{path.name}: int8, {change} on {q['validation'].get('data')}"


def default_calibration_dir() -> Path:
    """FER2013Valid of the project's shared data (the crops the issue asks to calibrate on)."""
    from ferkit.paths import shared_data_dir

    return shared_data_dir() / "ferplus" / "FER2013Valid"


def cached_int8_export(name_or_path: PathLike, calibration: Optional[PathLike] = None,
                       n: int = CALIBRATION_SIZE, method: str = "minmax", seed: int = 0) -> Path:
    """The int8 file of some weights, quantised on first use (keyed by weights and calibration set)."""
    from ferkit.data.cache import fingerprint

    weights = get_weights(name_or_path)
    folder = Path(calibration) if calibration is not None else default_calibration_dir()
    if not folder.is_dir():
        raise NotFoundError(f"int8 calibration folder {folder} not found (give face crops, e.g. "
                            "ferplus/FER2013Valid)")
    files = calibration_files(folder, n, seed)
    _, ort = _need_onnx()
    h = hashlib.sha256(f"{export_key(weights)}:{fingerprint(files)}:{method}:{ort.__version__}:"
                       f"{INT8_REVISION}".encode())
    path = cache_root() / f"{weights.name}-int8-{h.hexdigest()[:16]}.onnx"
    if not path.exists():
        fp32 = cached_export(name_or_path)
        quantize_int8(fp32, path, calibration_inputs(files, weights.preprocessing), method=method,
                      note=f"{len(files)} crops of {folder} (seed {seed})", source_digest=weights_digest(weights))
    _touch_and_prune(path)
    return path
