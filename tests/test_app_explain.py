"""FERSNet explanation panels (issue 12, "Gates and synthesis"), driven from the dicts their workers send.

No trained weights are needed: the gate keys come from a randomly initialised FERSNet (so the
panel follows the model's real gate dict), the map values are set to the narrow band trained
gates sit in (0.36-0.54), and the synthesis strip gets a face with a small known change.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from app.core.explain import (CONTRAST_MODES, colormap_lut, colour_range, difference_maps,  # noqa: E402
                              difference_scale, render_gate, synthesis_accuracies, weights_info)

LO, HI = 0.36, 0.54


def grabbed(widget) -> np.ndarray:
    """What the widget shows on screen, as uint8 RGB ``[H, W, 3]``."""
    from PySide6.QtGui import QImage

    img = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    buf = np.frombuffer(img.constBits(), np.uint8).reshape(img.height(), img.bytesPerLine())
    return buf[:, : img.width() * 3].reshape(img.height(), img.width(), 3).copy()


def model_gate_keys() -> list[str]:
    """The gate keys a FERSNet forward pass really returns (what the panel's selectors must offer)."""
    import torch

    from ferkit.models.registry import create_model

    model = create_model("fersnet_light", num_classes=7, input_size=96, width=4).eval()
    with torch.no_grad():
        return list(model(torch.zeros(1, 1, 96, 96), return_gates=True).gates)


def narrow_maps(keys: list[str]) -> dict[str, np.ndarray]:
    """Gate maps with structure (a gradient plus a bright blob) squeezed into [0.36, 0.54]."""
    rng = np.random.default_rng(0)
    out = {}
    for i, key in enumerate(keys):
        side = 48 >> (int(key.split("/")[-1]) - 1)
        y, x = np.mgrid[0:side, 0:side] / max(side - 1, 1)
        m = 0.6 * x + 0.4 * np.exp(-((x - 0.5) ** 2 + (y - 0.7) ** 2) * 20) + 0.02 * rng.random((side, side)) + i * 1e-3
        m = (m - m.min()) / (m.max() - m.min())
        out[key] = (LO + (HI - LO) * m).astype(np.float32)
    return out


def face(side: int = 96) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(40, 200, size=(side, side, 1), dtype=np.uint8)


def shown(qtbot, panel_class: str, width: int, height: int):
    """A panel of :mod:`app.widgets.explain_panels`, sized and shown."""
    import app.widgets.explain_panels as panels

    panel = getattr(panels, panel_class)()
    qtbot.addWidget(panel)
    panel.resize(width, height)
    panel.show()
    return panel


@pytest.fixture()
def gates_panel(qtbot):
    panel = shown(qtbot, "GatesPanel", 460, 760)
    maps = narrow_maps(model_gate_keys())
    panel.set_data({"model": "fersnet", "track_id": 1, "crop": face(), "maps": maps,
                    "weights": {"text": "Weights: <b>test</b>"}})
    return panel, maps


# ------------------------------------------------------------------------------------- gates
def test_narrow_gate_map_spans_the_colour_range_and_the_bar_prints_its_real_values(gates_panel) -> None:
    panel, _maps = gates_panel
    panel.opacity.setValue(100)  # the picture is then exactly the colour table's colours
    # what the issue saw: a fixed 0-1 scale uses under a fifth of the colours
    panel.set_contrast("fixed")
    fixed = panel.rendered["indices"]
    assert int(fixed.max()) - int(fixed.min()) < 0.2 * 255
    assert panel.colour_bar.texts[0] == "1.000" and panel.colour_bar.texts[-1] == "0.000"

    panel.set_contrast("robust")
    r = panel.rendered
    assert r["indices"].min() <= 8 and r["indices"].max() >= 247
    lut = colormap_lut(r["cmap"])
    shown = panel.image.array.reshape(-1, 3)
    for end in (lut[0], lut[255]):  # both ends of the colour table are on screen
        assert np.abs(shown.astype(int) - end.astype(int)).sum(axis=1).min() <= 12
    hi, lo = float(panel.colour_bar.texts[0]), float(panel.colour_bar.texts[-1])
    assert lo == pytest.approx(LO, abs=0.01) and hi == pytest.approx(HI, abs=0.01)
    assert "0.360" in panel.stats.text() and "0.540" in panel.stats.text()

    panel.set_contrast("centred")  # symmetric about 0.5, diverging colours; the low end still reaches the edge
    r = panel.rendered
    assert r["lo"] + r["hi"] == pytest.approx(1.0) and r["cmap"] != "inferno"
    assert r["indices"].min() <= 8
    assert float(panel.colour_bar.texts[1]) == pytest.approx(0.5)


def test_level_and_direction_selectors_follow_the_models_gate_dict(gates_panel) -> None:
    from ferkit.models.fersnet import DIRECTIONS

    panel, maps = gates_panel
    directions = [panel.direction.itemData(i) for i in range(panel.direction.count())]
    levels = [panel.level.itemData(i) for i in range(panel.level.count())]
    assert sorted(directions) == sorted(DIRECTIONS)
    assert levels == sorted({k.split("/")[-1] for k in maps}, key=int)
    assert "synthesis → recognition" in panel.direction.itemText(directions.index("fer<-fes"))
    seen = set()
    for d in DIRECTIONS:
        for lv in levels:
            panel.select("z", d, lv)
            assert panel.current_key() == f"z/{d}/{lv}"
            seen.add(panel.image.array.tobytes())
    assert len(seen) == len(DIRECTIONS) * len(levels)  # every choice draws its own map


def test_gate_maps_are_named_in_words_and_say_how_wide_their_real_range_is(gates_panel) -> None:
    from PySide6.QtWidgets import QComboBox, QLabel

    from app.core.explain import parse_gate_keys, range_words

    panel, maps = gates_panel
    panel.select("r", "fer<-fes", "1")
    levels = len({k.split("/")[-1] for k in maps})
    title = panel.map_title.text()
    assert f"How much synthesis features flow into recognition, level 1 of {levels}" in title
    heat = maps["r/fer<-fes/1"]
    assert range_words(heat.min(), heat.max()) in title and "weak" in title  # 0.36-0.54: range 0.18
    panel.select("z", "fes<-fer", "2")
    assert "how much of the synthesis features are replaced by what comes from recognition" in \
        panel.map_title.text().lower()
    # no raw key anywhere the user reads: labels, selectors, thumbnails
    shown = [w.text() for w in panel.findChildren(QLabel)] + \
        [c.itemText(i) for c in panel.findChildren(QComboBox) for i in range(c.count())] + \
        [t.toolTip() for t in panel.thumbs.values()]
    assert not [t for t in shown if "fer<-fes" in t or "fes<-fer" in t or "r/" in t or "z/" in t]
    assert all("range " in t.toolTip() for t in panel.thumbs.values())
    # the words follow the map's real range, not the colour stretch
    assert range_words(0.37, 0.52) == "range 0.15: weak" and range_words(0.5, 0.51).endswith("nearly flat")
    assert range_words(0.1, 0.9).endswith("strong")
    assert [k.words(4) for k in parse_gate_keys(["r/fer<-fes/1"])] == \
        ["how much synthesis features flow into recognition, level 1 of 4"]


def test_gate_map_is_overlaid_on_the_aligned_face(gates_panel) -> None:
    panel, _maps = gates_panel
    panel.opacity.setValue(0)
    only_face = panel.image.array.copy()
    panel.opacity.setValue(100)
    only_map = panel.image.array.copy()
    panel.opacity.setValue(50)
    both = panel.image.array.astype(int)
    assert not np.array_equal(only_face, only_map)
    assert np.abs(both - (only_face.astype(int) + only_map.astype(int)) / 2).max() <= 1
    assert only_face[..., 0].std() > 10  # the face is there, not a blank


def test_contrast_modes_core() -> None:
    h = np.linspace(LO, HI, 101).reshape(1, -1)
    assert set(CONTRAST_MODES) == {"robust", "centred", "fixed"}
    lo, hi = colour_range(h, "robust")
    assert lo == pytest.approx(LO + 0.02 * (HI - LO)) and hi == pytest.approx(LO + 0.98 * (HI - LO))
    assert colour_range(h, "fixed") == (0.0, 1.0)
    lo, hi = colour_range(np.full((4, 4), 0.42), "robust")  # a constant map does not divide by zero
    flat = render_gate(np.zeros((8, 8), np.uint8), np.full((4, 4), 0.42))["indices"]
    assert hi > lo and abs(int(flat.max()) - 128) <= 1  # drawn as one mid colour
    with pytest.raises(ValueError):
        colour_range(h, "nonsense")


# ------------------------------------------------------------------------------------- synthesis
def synth_data(change: int = 6) -> dict:
    """A face and seven "synthesised" faces that differ from it only around the mouth, by ``change`` levels."""
    crop = face()
    images = np.repeat(crop[None], 7, axis=0).astype(np.int16)
    for i in range(7):
        images[i, 62:78, 30 + i:66 + i] += change + i
    return {"model": "fersnet", "track_id": 3, "crop": crop,
            "classes": ["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"],
            "images": np.clip(images, 0, 255).astype(np.uint8), "ms": 5.0,
            "weights": {"text": "Weights: <b>test</b>"}}


@pytest.fixture()
def synth_panel(qtbot):
    panel = shown(qtbot, "SynthesisPanel", 560, 560)
    data = synth_data()
    panel.set_data(data)
    qtbot.waitExposed(panel)
    return panel, data


def test_synthesis_labels_are_outside_the_face_and_the_face_pixels_are_untouched(synth_panel) -> None:
    panel, data = synth_panel
    for n in range(len(data["classes"]) + 1):
        img, cap, note = panel.tiles[n]
        expected = data["crop"] if n == 0 else data["images"][n - 1]
        assert cap.text() and (n == 0 or cap.text() == data["classes"][n - 1])
        tile = panel.tile_widgets[n]
        picture = img.geometry()
        assert not cap.geometry().intersects(picture) and not note.geometry().intersects(picture)
        assert cap.geometry().bottom() < picture.top() and note.geometry().top() > picture.bottom()
        assert cap.parent() is tile and note.parent() is tile
        # every screen pixel of the picture is an image pixel: no text, no smoothing
        rect = img.image_rect()
        scale = rect.width() // expected.shape[1]
        assert scale >= 1 and rect.width() == scale * expected.shape[1]
        screen = grabbed(img)[rect.top():rect.bottom() + 1, rect.left():rect.right() + 1]
        want = np.repeat(np.repeat(expected[:, :, 0], scale, 0), scale, 1)
        assert np.array_equal(screen[..., 0], want) and np.array_equal(screen[..., 1], want)


def test_difference_toggle_shows_where_the_face_changed(synth_panel) -> None:
    panel, data = synth_panel
    before = [panel.shown(n).copy() for n in range(1, 8)]
    assert all(np.array_equal(b, img) for b, img in zip(before, data["images"]))
    assert not panel.diff_bar.isVisible()
    panel.show_diff.setChecked(True)
    after = [panel.shown(n) for n in range(1, 8)]
    assert all(not np.array_equal(b, a) for b, a in zip(before, after))
    assert np.array_equal(panel.shown(0), data["crop"])  # the input stays as the reference
    # a change of only 6-12 grey levels lights up the mouth and leaves the rest dark
    luminance = after[0].astype(float).mean(axis=2)
    assert luminance[62:78, 30:66].mean() > 3 * luminance[:40].mean()
    assert panel.diff_bar.isVisible() and float(panel.diff_bar.texts[0]) == pytest.approx(12.0, abs=0.5)
    mean_change = data["images"][0].astype(float).mean() - data["crop"].astype(float).mean()
    assert panel.tiles[1][2].text() == f"|Δ| {mean_change:.1f}"  # the mean change, printed under the face
    panel.show_diff.setChecked(False)
    assert all(np.array_equal(panel.shown(n), img) for n, img in zip(range(1, 8), data["images"]))


def test_difference_core() -> None:
    crop = face()
    same = difference_maps(crop, [crop, crop])
    assert same.shape == (2, 96, 96) and same.max() == 0
    assert difference_scale(same) == 1.0  # an unchanged face is not stretched into noise
    d = difference_maps(crop, synth_data(change=6)["images"])
    assert d[0][62:78, 30:66].min() == 6 and d[0][:40].max() == 0


# ------------------------------------------------------------------------------------- weights card
def write_card(res: Path, name: str, metrics: dict) -> None:
    (res / "weights").mkdir(parents=True, exist_ok=True)
    card = {"name": name, "architecture": "fersnet_light", "classes": ["a", "b", "c", "d"],
            "preprocessing": {"input_size": 96, "grayscale": True, "mean": 0.5, "std": 0.5, "alignment": "ckplus48"},
            "file": f"{name}.pt", "metrics": metrics, "recipe": "fersnet/ckplus", "epochs": 3}
    (res / "weights" / f"{name}.json").write_text(json.dumps(card))


def test_synthesis_panel_names_its_weights_and_their_synthesis_accuracy(qtbot, tmp_path, monkeypatch) -> None:
    from app.widgets.explain_panels import SynthesisPanel

    write_card(tmp_path, "fersnet", {"ckplus48_fold0of10_synthesis_accuracy_judge_x": 0.314,
                                     "paper_ckplus_synthesis_accuracy": 0.9704})
    write_card(tmp_path, "fersnet-untested", {"val_accuracy": 0.7})
    monkeypatch.setenv("FERKIT_RESOURCES", str(tmp_path))
    panel = SynthesisPanel()
    qtbot.addWidget(panel)
    data = synth_data()
    del data["weights"]
    panel.set_data(data)
    text = panel.weights_label.text()
    assert "fersnet" in text and "31.4 %" in text and "judge x on CK+48 fold 0 of 10" in text
    assert "97.0 %" in text and "paper" in text and "chance 25.0 %" in text
    assert "fersnet.json" in text
    panel.set_data({**data, "model": "fersnet-untested"})
    assert "fersnet-untested" in panel.weights_label.text() and "not measured" in panel.weights_label.text()
    panel.set_data({**data, "model": "gone"})
    assert "not measured" in panel.weights_label.text()


def test_shipped_fersnet_card_accuracy_is_what_the_panel_says() -> None:
    from ferkit.paths import weights_dir

    card = weights_dir() / "fersnet.json"
    if not card.exists():
        pytest.skip("no shipped fersnet card")
    metrics = json.loads(card.read_text())["metrics"]
    info = weights_info("fersnet")
    measured = synthesis_accuracies(metrics)
    assert [v for _l, v in measured] == [v for k, v in metrics.items()
                                         if "synthesis_accuracy" in k and not k.startswith("paper_")]
    if measured:
        assert all(f"{v * 100:.1f} %" in info["text"] for _l, v in measured)
    else:
        assert "not measured" in info["text"]
    labels = dict(synthesis_accuracies({"photos_synthesis_accuracy_judge_netb_dal_mse": 0.6,
                                        "ckplus48_fold0of10_synthesis_accuracy": 0.8}))
    assert labels == {"judge netb-dal-mse on photos": 0.6, "CK+48 fold 0 of 10": 0.8}  # names as users type them


def test_the_card_s_selective_channel_is_shown_by_default_and_the_mean_on_request(qtbot) -> None:
    """Single channels show face parts; the panel shows the card's channel and says which it is."""
    panel = shown(qtbot, "GatesPanel", 460, 760)
    keys = model_gate_keys()
    mean_maps = narrow_maps(keys)
    channel_maps = {k: np.broadcast_to(np.linspace(0.05, 0.95, m.shape[0])[:, None], m.shape).astype(np.float32)
                    for k, m in mean_maps.items()}
    panel.set_data({"model": "fersnet", "track_id": 1, "crop": face(), "maps": mean_maps,
                    "channel_maps": channel_maps, "channels": {k: (6, 32) for k in keys},
                    "weights": {"text": "Weights: <b>test</b>"}})
    assert panel.channel_view() == "channel" and panel.view.isEnabled()
    assert "channel 7 of 32" in panel.map_title.text() and "strong" in panel.map_title.text()
    assert "most selective channel" in panel.info.text()
    panel.set_channel_view("mean")
    assert "mean of all channels" in panel.map_title.text() and "strong" not in panel.map_title.text()
    assert "mean of each gate's channels" in panel.info.text()
    # weights without selective channels: the mean, and the choice is greyed out
    panel.set_channel_view("channel")
    panel.set_data({"model": "fersnet", "track_id": 2, "crop": face(), "maps": mean_maps,
                    "weights": {"text": "Weights: <b>old</b>"}})
    assert panel.channel_view() == "mean" and not panel.view.isEnabled()
    assert "mean of all channels" in panel.map_title.text()


def test_gate_maps_take_the_named_channel() -> None:
    from app.core.explain import gate_arrays, gate_maps

    gate = np.random.default_rng(0).random((1, 4, 6, 6)).astype(np.float32)
    maps = gate_maps(gate_arrays({"z/fes<-fer/1": gate, "r/fes<-fer/1": gate}), channels={"z/fes<-fer/1": 2})
    assert list(maps) == ["z/fes<-fer/1"]
    np.testing.assert_allclose(maps["z/fes<-fer/1"], gate[0, 2])
    np.testing.assert_allclose(gate_maps(gate_arrays({"z/fes<-fer/1": gate}))["z/fes<-fer/1"], gate[0].mean(axis=0),
                               rtol=1e-6)
