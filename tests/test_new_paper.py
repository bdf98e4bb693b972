"""Adding a paper is three places: a model file, a recipe file, weights files.

A toy gated model and its recipe are registered from a temporary module (as a new paper's files
would be) and every side of ferkit finds them without a list being edited: ``ferkit models``,
``ferkit train --list``, the training bench, the ONNX export check and, because the model says
``has_gates``, the app's explainers.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Optional

import pytest
import torch

from ferkit.cli import main
from ferkit.models.registry import architectures_with, model_info
from ferkit.models.weights import Preprocessing, Weights, weights_with
from ferkit.recipes.registry import get_recipe

MODEL, RECIPE = "test-toy-gated", "test-toy/ckplus"

PAPER_FILES = '''
"""A toy gated expression net and its recipe: what a new paper's model and recipe files hold."""
from typing import Any

import torch
import torch.nn as nn

from ferkit.models.base import FerModel
from ferkit.models.outputs import ModelOutput
from ferkit.models.registry import register_model
from ferkit.recipes.base import ClassifierRecipe
from ferkit.recipes.data import CkplusData
from ferkit.recipes.registry import register_recipe
from ferkit.training.recipe import NetSpec


class ToyGated(FerModel):
    has_gates = True

    def __init__(self, num_classes: int = 7, in_channels: int = 1, width: int = 8) -> None:
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels
        self.conv, self.bn = nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width)
        self.gate, self.fc = nn.Conv2d(width, width, 1), nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor, *, return_gates: bool = False) -> ModelOutput:
        h = torch.relu(self.bn(self.conv(x)))
        g = torch.sigmoid(self.gate(h))
        return ModelOutput(logits=self.fc((h * g).mean((2, 3))), gates={"g": g} if return_gates else {})


@register_model("test-toy-gated", paper="a paper added by a test", small_cfg={"width": 4})
def toy_gated(num_classes: int = 7, in_channels: int = 1, width: int = 8) -> ToyGated:
    """Toy gated expression net (one conv, one gate)."""
    return ToyGated(num_classes, in_channels, width)


@register_recipe
class ToyRecipe(CkplusData, ClassifierRecipe):
    name = "test-toy/ckplus"
    description = "toy gated net on CK+48"
    network = NetSpec("test-toy-gated", {"num_classes": 7}, 32, 16)

    def weights_meta(self) -> dict[str, Any]:
        return self._meta("toy", self.architecture, {"num_classes": len(self.classes)}, self._data_desc)
'''


@pytest.fixture(scope="module")
def paper(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """The toy paper's files, imported once from a folder outside ferkit (its registries are global)."""
    path = tmp_path_factory.mktemp("paper") / "toy_paper.py"
    path.write_text(PAPER_FILES)
    spec = importlib.util.spec_from_file_location("toy_paper", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["toy_paper"] = module
    spec.loader.exec_module(module)
    return module


def test_the_commands_list_it(paper: ModuleType, capsys: pytest.CaptureFixture) -> None:
    assert main(["models", "--architectures", "--json"]) == 0
    entries = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    assert entries[MODEL]["description"].startswith("Toy gated expression net")
    assert main(["train", "--list"]) == 0 and RECIPE in capsys.readouterr().out
    assert get_recipe(RECIPE).network.architecture == MODEL


def test_the_model_describes_itself(paper: ModuleType) -> None:
    cfg = model_info(MODEL).default_cfg
    assert cfg.has_gates and not cfg.has_synthesis and cfg.num_classes == 7 and cfg.in_channels == 1
    assert MODEL in architectures_with("gates") and MODEL not in architectures_with("synthesis")


def test_the_training_bench_measures_it(paper: ModuleType) -> None:
    from ferkit.bench.training import bench_training

    threads = torch.get_num_threads()
    [row] = bench_training([RECIPE])
    assert torch.get_num_threads() == threads
    assert row["recipe"] == RECIPE and row["architecture"] == MODEL and row["input"] == [1, 32, 32]
    assert row["img_per_s"]["median"] > 0


def test_the_onnx_export_check_covers_it(paper: ModuleType, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from tests.test_onnx_export import check_fresh_export

    check_fresh_export(MODEL, tmp_path)


def test_the_explainers_find_its_weights(paper: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights_dir = tmp_path / "resources" / "weights"
    weights_dir.mkdir(parents=True)
    model = paper.toy_gated()
    torch.save(model.state_dict(), weights_dir / "toy.pt")
    card = Weights(name="toy", architecture=MODEL, classes=[f"c{i}" for i in range(7)],
                   preprocessing=Preprocessing(input_size=32), model_cfg={"num_classes": 7}, file="toy.pt")
    (weights_dir / "toy.json").write_text(json.dumps(card.to_dict()))
    monkeypatch.setenv("FERKIT_RESOURCES", str(tmp_path / "resources"))
    assert weights_with("gates") == ["toy"] and weights_with("synthesis") == []

    pytest.importorskip("PySide6")
    from app.controllers.explainers import GATES, SYNTHESIS, ExplainersController

    # the controller's own lookup, on a bare object: no window, no worker threads
    controller = SimpleNamespace(explainer=None, _fallback={})
    assert ExplainersController.fallback(controller, GATES) == ("toy", card.preprocessing)
    assert ExplainersController.fallback(controller, SYNTHESIS) is None


def test_the_default_identity_net_is_read_from_the_cards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Synthesis's identity net (L_idt, identity similarity) comes from what the shipped cards say, not a name list."""
    from ferkit.errors import NotFoundError
    from ferkit.evaluation.synthesis import default_identity_weights, resolve_identity_weights
    from ferkit.models.weights import list_weights

    if "lightcnn9-identity" in list_weights():  # today's shipped weights: the same choice as the old name list
        assert default_identity_weights() == "lightcnn9-identity"
    weights_dir = tmp_path / "resources" / "weights"
    weights_dir.mkdir(parents=True)
    monkeypatch.setenv("FERKIT_RESOURCES", str(tmp_path / "resources"))

    def ship(name: str, architecture: str, lfw: Optional[float], calibrated: bool = True) -> None:
        card = Weights(name=name, architecture=architecture, classes=[f"id{i}" for i in range(10)],
                       preprocessing=Preprocessing(input_size=48), model_cfg={"num_classes": 10},
                       metrics={} if lfw is None else {"lfw_view2_accuracy": lfw},
                       identity_threshold=0.7 if calibrated else None, identity_far=0.01 if calibrated else None)
        (weights_dir / f"{name}.json").write_text(json.dumps(card.to_dict()))

    assert default_identity_weights() is None
    with pytest.raises(NotFoundError, match="no shipped weights have an identity feature"):
        resolve_identity_weights(None)
    ship("expression-net", "resnet12_fer", None, calibrated=False)  # no identity feature: never a candidate
    ship("branch", "deepid", 0.9, calibrated=False)
    assert resolve_identity_weights(None) == "branch"  # an unmeasured identity branch, as a last resort
    ship("deepid-a", "deepid", 0.80)
    ship("deepid-b", "deepid", 0.85)
    assert default_identity_weights() == "deepid-b"  # calibrated ones first, the best on LFW among them
    ship("lightcnn-new", "lightcnn9", 0.75)
    assert default_identity_weights() == "lightcnn-new"  # the paper's architecture before a better DeepID
    assert resolve_identity_weights("deepid-a") == "deepid-a"  # a named net is taken as named
