"""Which model the app starts with, and the window saying which one runs, why, and on what engine.

On a weak machine (no CUDA GPU, few CPU cores: ``app.core.models.is_weak_machine``) the default is
the small distilled ``ferkit-live`` when it is shipped, else ``tfe-jl``; a saved or command-line
choice always wins, and the app's own default is not saved as a choice (a later session on
another machine gets that machine's default). The window tests run on random-init stand-ins of
both weights in a tmp resources folder (``tests.fixtures.app.standin_weights``), so they need no
shipped file; the machine is injected (``this_machine`` monkeypatched).
"""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from app.core.models import (ENGINE_NAMES, LIVE_WEIGHTS, DefaultChoice, Machine, default_choice,  # noqa: E402
                             is_weak_machine, model_status, picker_entry, this_machine)
from tests.fixtures.app import isolated_config, standin_resources, standin_weights, window  # noqa: E402,F401

WEAK, WEAK_GPU, STRONG = Machine(cores=2, cuda=False), Machine(cores=2, cuda=True), Machine(cores=16, cuda=False)
LIVE_ACC, TFE_ACC = 0.861, 0.8837  # stated on the stand-in cards by this test


@pytest.fixture()
def machine(monkeypatch):
    """``set(Machine)``: the machine ``default_choice`` sees from now on."""
    import app.core.models as models

    def set_machine(m: Machine) -> Machine:
        monkeypatch.setattr(models, "this_machine", lambda: m)
        return m

    return set_machine


@pytest.fixture()
def live_shipped(tmp_path: Path, monkeypatch) -> Path:
    """A resources folder holding stand-ins of ``tfe-jl`` and ``ferkit-live`` (cards with accuracies)."""
    folder = standin_resources(tmp_path, monkeypatch)
    standin_weights(folder, "tfe-jl", "tfe_jl", {"fer2013valid_accuracy_majority": TFE_ACC})
    standin_weights(folder, LIVE_WEIGHTS, "resnet_live", {"fer2013valid_accuracy_majority": LIVE_ACC})
    return folder


# ---------------------------------------------------------------------------------------- the rule
def test_weak_machine_is_no_gpu_and_at_most_four_cores() -> None:
    assert is_weak_machine(WEAK) and is_weak_machine(Machine(4, False)) and is_weak_machine(Machine(1, False))
    assert not is_weak_machine(Machine(5, False)) and not is_weak_machine(STRONG)
    assert not is_weak_machine(WEAK_GPU)


def test_this_machine_counts_the_cores_this_process_may_use() -> None:
    m = this_machine()
    assert m.cores == (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())


def test_weak_machine_defaults_to_ferkit_live_when_shipped_and_tfe_jl_otherwise() -> None:
    names = ["deepid", LIVE_WEIGHTS, "resnet18-ferplus", "tfe-jl"]
    assert default_choice(WEAK, names) == DefaultChoice(LIVE_WEIGHTS, "fast default for this 2-core CPU")
    without = default_choice(WEAK, [n for n in names if n != LIVE_WEIGHTS])
    assert without.key == "tfe-jl" and f"{LIVE_WEIGHTS}, fast on this 2-core CPU, is not installed" \
        in without.reason
    assert default_choice(WEAK_GPU, names) == DefaultChoice("tfe-jl", "default")
    assert default_choice(STRONG, names) == DefaultChoice("tfe-jl", "default")
    assert default_choice(STRONG, []).key is None


def test_the_bench_measures_the_model_the_app_starts_with() -> None:
    from ferkit.models.defaults import live_default_weights

    names = ["deepid", LIVE_WEIGHTS, "tfe-jl"]
    for machine in (WEAK, WEAK_GPU, STRONG):
        assert live_default_weights(machine, names) == default_choice(machine, names).key
    assert live_default_weights(WEAK, ["tfe-jl"]) == "tfe-jl"


def test_saved_and_command_line_choices_win_and_the_default_is_not_saved(live_shipped, machine) -> None:
    from app.core.enrolment import EnrolmentStore
    from app.core.state import AppState
    from app.settings import app_settings, read_into, write_from

    machine(WEAK)

    def read(weights=None) -> AppState:
        state = AppState(EnrolmentStore(), Path("enrolments"))
        read_into(state, app_settings(), ["auto", "cpu"], weights=weights)
        return state

    state = read()
    assert (state.model, state.model_reason, state.model_chosen) == (LIVE_WEIGHTS, "fast default for this 2-core CPU",
                                                                      False)
    s = app_settings()
    write_from(state, s)
    assert s.value("model") == ""  # the default is not a choice
    s.setValue("model", "tfe-jl")
    s.sync()
    assert (read().model, read().model_reason, read().model_chosen) == ("tfe-jl", "chosen", True)
    assert (read("resnet18-ferplus").model, read("resnet18-ferplus").model_reason) == ("resnet18-ferplus",
                                                                                      "chosen with --weights")
    state = read()
    write_from(state, s)
    assert s.value("model") == "tfe-jl"  # a choice stays one


# ---------------------------------------------------------------------------------------- words
def fake_handle(key: str, engine: str, reason=None, note=None):
    predictor = SimpleNamespace(engine=engine, engine_requested="auto", engine_reason=reason, engine_note=note)
    return SimpleNamespace(key=key, predictor=predictor, device="cpu")


def test_status_says_model_reason_and_engine_with_the_engines_reason_in_the_tooltip() -> None:
    note = "ferkit-live.int8.onnx: int8, 0.10 points below float on FER2013Valid"
    text, tip = model_status(LIVE_WEIGHTS, "fast default for this 2-core CPU", fake_handle(LIVE_WEIGHTS, "onnx-int8",
                                                                                         note=note))
    assert text == "ferkit-live — fast default for this 2-core CPU (ONNX int8)"
    assert note in tip and "asked: auto" in tip
    text, tip = model_status("tfe-jl", "chosen", fake_handle("tfe-jl", "torch", reason="device cuda: torch runs on "
                                                                                        "the GPU"))
    assert text == "tfe-jl — chosen (torch on cpu)" and "device cuda: torch runs on the GPU" in tip
    # the previous model's handle is never described as the new one
    assert model_status("tfe-jl", "chosen", fake_handle(LIVE_WEIGHTS, "onnx"), loading=True)[0] == \
        "tfe-jl — chosen (loading…)"
    assert model_status("tfe-jl", "chosen", None)[0] == "tfe-jl — chosen (not loaded)"


def test_picker_marks_the_live_model_fast_with_each_cards_accuracy() -> None:
    card = SimpleNamespace(metrics={"fer2013valid_accuracy_majority": LIVE_ACC})
    assert picker_entry(LIVE_WEIGHTS, card, True)[0] == "ferkit-live — fast, FER2013Valid 86.1 %"
    assert picker_entry("tfe-jl", SimpleNamespace(metrics={"fer2013valid_accuracy_majority": TFE_ACC}), True)[0] == \
        "tfe-jl — FER2013Valid 88.4 %"
    assert picker_entry("deepid", SimpleNamespace(metrics={}), True) == ("deepid", "deepid: no FER2013Valid accuracy "
                                                                                   "on its card")


# ---------------------------------------------------------------------------------------- the window
def expected_engine(w) -> str:
    return ENGINE_NAMES[w.state.loaded.primary.predictor.engine]


def test_window_on_a_weak_machine_runs_ferkit_live_and_says_so(qtbot, window, live_shipped, machine) -> None:
    machine(WEAK)
    w = window()
    assert w.current_model() == LIVE_WEIGHTS and w.state.loaded.primary.key == LIVE_WEIGHTS
    label = w.model_label
    assert label.text() == f"ferkit-live — fast default for this 2-core CPU ({expected_engine(w)})"
    assert "Engine: " + expected_engine(w) in label.toolTip()
    texts = {w.model_combo.itemData(i): w.model_combo.itemText(i) for i in range(w.model_combo.count())}
    assert texts == {LIVE_WEIGHTS: "ferkit-live — fast, FER2013Valid 86.1 %", "tfe-jl": "tfe-jl — FER2013Valid 88.4 %"}
    assert w.model_combo.currentData() == LIVE_WEIGHTS

    w.model_combo.setCurrentIndex(w.model_combo.findData("tfe-jl"))  # the user picks the other one
    assert label.text() == "tfe-jl — chosen (loading…)"
    qtbot.waitUntil(lambda: getattr(w.state.loaded.primary, "key", None) == "tfe-jl", timeout=120000)
    assert label.text() == f"tfe-jl — chosen ({expected_engine(w)})"
    w.save_settings()
    w2 = window()  # the saved choice wins over the weak machine's default
    assert w2.current_model() == "tfe-jl" and w2.model_label.text() == f"tfe-jl — chosen ({expected_engine(w2)})"


def test_window_default_follows_the_machine_and_is_not_saved(qtbot, window, live_shipped, machine) -> None:
    machine(WEAK)
    w = window()
    assert w.current_model() == LIVE_WEIGHTS
    w.save_settings()
    machine(STRONG)
    w2 = window()
    assert w2.current_model() == "tfe-jl"
    assert w2.model_label.text() == f"tfe-jl — default ({expected_engine(w2)})"


def test_window_without_ferkit_live_keeps_tfe_jl_and_says_why(qtbot, window, live_shipped, machine) -> None:
    for f in live_shipped.glob(f"{LIVE_WEIGHTS}.*"):
        f.unlink()
    machine(WEAK)
    w = window()
    assert w.current_model() == "tfe-jl"
    assert w.model_label.text().startswith("tfe-jl — default; ferkit-live, fast on this 2-core CPU, is not installed (")


def _identity_standin(folder: Path, name: str = "deepid") -> str:
    """A card of an identity net (its classes are subject numbers), as the shipped deepid cards are."""
    from ferkit.models.weights import Preprocessing, Weights

    Weights(name, "deepid", [f"{i:05d}" for i in range(7202, 7212)], Preprocessing(48, True, 0.5, 0.5, "celeba"),
            {"num_classes": 10}, file=f"{name}.pt", notes="test stand-in").save_card(folder / f"{name}.json")
    return name


def test_model_box_offers_only_expression_models_and_a_saved_identity_net_falls_back(
        qtbot, window, live_shipped, machine) -> None:
    from app.settings import app_settings

    machine(STRONG)
    ident = _identity_standin(live_shipped)
    s = app_settings()
    s.setValue("model", ident)  # saved by an earlier version, which offered identity nets
    s.sync()
    w = window()
    offered = {w.model_combo.itemData(i) for i in range(w.model_combo.count())}
    assert offered == {"tfe-jl", LIVE_WEIGHTS}  # decided from the cards' classes: the identity net is not offered
    assert w.current_model() == "tfe-jl" and not w.state.model_chosen
    assert "deepid" in w.last_message and "not an expression model" in w.last_message and "tfe-jl" in w.last_message
    assert w.model_label.text().startswith("tfe-jl — default (")
    w.save_settings()
    assert str(app_settings().value("model") or "") == ""  # the refused choice is not kept for the next launch
    assert w.models.check_checkpoint(str(live_shipped / f"{ident}.json")) is False  # nor loadable as a checkpoint
