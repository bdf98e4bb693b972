"""Dataset names -> readers, so ``ferkit prepare DATASET ...`` (and recipes, the app) pick one by name.

Each entry says how to list the protocol's files (``index``: for ``ferkit prepare``, which detects
and aligns every file), how to decode it directly (``load``), which options it takes, which crop
style matches it, and whether its files already are face crops.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from ferkit.data.dataset import FaceDataset
from ferkit.data.index import DatasetIndex
from ferkit.errors import UnknownNameError, UsageError


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    index: Optional[Callable[..., DatasetIndex]]
    load: Callable[..., FaceDataset]
    #: option name -> (default, allowed values or None, help)
    options: dict[str, tuple[Any, Optional[tuple[Any, ...]], str]] = field(default_factory=dict)
    #: crop style (ferkit.face.align) that reproduces the framing this data is known by
    alignment: str = "fer2013"
    cropped: bool = False

    def resolve_options(self, given: dict[str, Any]) -> dict[str, Any]:
        unknown = {k for k, v in given.items() if v is not None} - set(self.options)
        if unknown:
            raise UsageError(f"dataset {self.name!r} takes no option(s) {', '.join(sorted(unknown))}; "
                             f"it takes: {', '.join(sorted(self.options)) or 'none'}")
        out = {}
        for key, (default, allowed, _) in self.options.items():
            value = given.get(key)
            value = default if value is None else value
            if allowed is not None and value not in allowed:
                raise UsageError(f"{self.name}: --{key} must be one of {', '.join(map(str, allowed))}, not {value!r}")
            out[key] = value
        return out


def _lazy(module: str, attr: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        import importlib

        return getattr(importlib.import_module(f"ferkit.data.{module}"), attr)(*args, **kwargs)
    call.__name__ = attr
    return call


_SPECS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    _SPECS[spec.name] = spec
    return spec


register_dataset(DatasetSpec(
    "ferplus", "FER+ split folder (label.csv + 48x48 PNGs), 8 classes",
    _lazy("ferplus", "index_ferplus"), _lazy("ferplus", "load_ferplus"),
    {"vote": ("majority", ("majority", "plurality"), "FER+ vote rule"),
     "split": (None, None, "train/valid/test child of the FER+ root")},
    alignment="fer2013", cropped=True))
register_dataset(DatasetSpec(
    "fer2013", "FER2013 7 classes: fer2013.csv, or fer2013_emotion.csv + FER+ PNGs",
    _lazy("fer2013", "index_fer2013"), _lazy("fer2013", "load_fer2013"),
    {"usage": ("Training", ("Training", "PublicTest", "PrivateTest"), "FER2013 Usage filter")},
    alignment="fer2013", cropped=True))
register_dataset(DatasetSpec(
    "ckplus48", "CK+48/<class>/S###_###_*.png (last 3 frames, 7 classes)",
    _lazy("ckplus", "index_ckplus48"), _lazy("ckplus", "load_ckplus48"), alignment="ckplus48", cropped=True))
register_dataset(DatasetSpec(
    "ckplus", "CK+ official: cohn-kanade-images/ + Emotion/",
    _lazy("ckplus_official", "index_ckplus"), _lazy("ckplus_official", "load_ckplus"),
    {"protocol": ("last3", ("last3", "last3+neutral"), "CK+ protocol (7 or 8 classes)")}, alignment="ckplus48"))
register_dataset(DatasetSpec(
    "oulu", "Oulu-CASIA OriginalImg|Aligned/VL|NI/Strong|Weak|Dark/P###/<Emotion>/ (last 3 frames, 6 classes)",
    _lazy("oulu", "index_oulu"), _lazy("oulu", "load_oulu"),
    {"variant": ("OriginalImg", ("OriginalImg", "Aligned"), "image variant"),
     "spectrum": ("VL", ("VL", "NI"), "visible light or near infrared"),
     "light": ("Strong", ("Strong", "Weak", "Dark"), "illumination")}, alignment="ckplus48"))
register_dataset(DatasetSpec(
    "mmi", "MMI frame folders + labels.csv (sequence,emotion[,subject]); middle 3 frames, 6 classes",
    _lazy("mmi", "index_mmi"), _lazy("mmi", "load_mmi"), alignment="ckplus48"))
register_dataset(DatasetSpec(
    "sfew", "SFEW 2.0 Train|Val/<Emotion>/* (7 classes)",
    _lazy("sfew", "index_sfew"), _lazy("sfew", "load_sfew"),
    {"split": ("Train", ("Train", "Val"), "SFEW split")}, alignment="fer2013"))
register_dataset(DatasetSpec(
    "identity", "identity folders <root>/<identity>/<image> (CASIA-WebFace, VGGFace2, CelebA subset)",
    _lazy("identity", "index_identity_folders"), _lazy("identity", "load_identity_folders"),
    {"min_images": (1, None, "drop identities with fewer images")}, alignment="celeba", cropped=True))
register_dataset(DatasetSpec(
    "orl", "AT&T/ORL sN/K.pgm", _lazy("identity", "index_identity_folders"), _lazy("identity", "load_orl"),
    alignment="celeba", cropped=True))
register_dataset(DatasetSpec(
    "lfw", "LFW lfw/<name>/<name>_NNNN.jpg", _lazy("identity", "index_identity_folders"),
    _lazy("lfw", "load_lfw"), {"min_images": (1, None, "drop identities with fewer images")}, alignment="celeba"))
register_dataset(DatasetSpec(
    "yale", "Yale Face Database A subjectNN.<condition> GIFs", _lazy("yale", "index_yale"),
    _lazy("yale", "load_yale"), {"label": ("subject", ("subject", "condition"), "what the classes are")},
    alignment="celeba"))


def list_datasets() -> list[str]:
    return sorted(_SPECS)


def get_dataset(name: str) -> DatasetSpec:
    try:
        return _SPECS[name]
    except KeyError:
        raise UnknownNameError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}") from None


def open_index(name: str, src: Union[str, Path], **options: Any) -> DatasetIndex:
    """The validated file index of dataset ``name`` at ``src`` (what ``ferkit prepare`` reads)."""
    spec = get_dataset(name)
    if spec.index is None:
        raise UsageError(f"dataset {name!r} has no file index")
    src = Path(src)
    if name == "lfw":
        from ferkit.data.lfw import find_images_root

        src = find_images_root(src)
    index = spec.index(src, **spec.resolve_options(options))
    index.name = name
    index.cropped = spec.cropped if name != "oulu" else index.cropped
    return index


def load_dataset(name: str, src: Union[str, Path], **kwargs: Any) -> FaceDataset:
    """Decode dataset ``name`` directly with its reader (no face detection)."""
    return get_dataset(name).load(src, **kwargs)
