"""The GPU campaign cannot rot: its smoke mode runs every stage on CPU with synthetic packs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from ferkit.training.budget import fit_epochs

ROOT = Path(__file__).resolve().parent.parent


def test_smoke_campaign_runs_every_stage_and_writes_loadable_weights(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "FERKIT_CACHE": "off",
           "FERKIT_PACKS": str(tmp_path / "no-packs")}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_campaign.sh"), "--smoke", "--device", "cpu",
                           "--out", str(out), "--runs", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "campaign.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["deepid", "resnet18", "joint", "lightcnn", "netb", "eifn",
                                                       "fersnet", "eifn_efn"]
    assert all(s["status"] == "completed" and s["epochs"] == 1 for s in report["stages"]), report
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and "campaign.json" in files  # what the device may return
    from ferkit.models.weights import load_weights

    for name in ("tfe-jl", "netb-dal-mse-128", "fersnet-paper"):
        state = torch.load(out / f"{name}.pt", weights_only=False)["modules"]["model"]
        assert all(v.dtype != torch.float32 for v in state.values())  # fp16 travels back
        loaded = load_weights(out / f"{name}.pt", device="cpu")  # the shape `ferkit export-weights` reads
        p = loaded.weights.preprocessing
        x = torch.zeros(1, p.channels, p.input_size, p.input_size)
        assert loaded.model(x).logits.shape == (1, len(loaded.weights.classes))


def test_fit_epochs_leaves_room_for_what_the_probe_does_not_see() -> None:
    assert fit_epochs(100, 1000, 100, overhead=0.0) == 10
    assert fit_epochs(100, 1000, 100) == 7
    assert fit_epochs(1, 10**6, 10) == 1 and fit_epochs(1e6, 10, 1e6, max_epochs=50) == 50


def test_large_weights_travel_as_int8_parts_and_merge_back(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import gpu_campaign

    from ferkit.models.registry import create_model
    from ferkit.models.weights import Preprocessing, Weights, load_weights

    model = create_model("resnet18_fer", num_classes=8)
    meta = Weights("r", "resnet18_fer", [str(i) for i in range(8)], Preprocessing(), {"num_classes": 8}).to_dict()
    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"format": "ferkit-checkpoint/1", "weights_meta": meta, "modules": {"model": model.state_dict()}}, ckpt)
    files = gpu_campaign.export_compact(ckpt, "r", tmp_path, max_file=200_000)
    assert len(files) > 1 and all((tmp_path / f).stat().st_size <= 200_000 for f in files)
    merged = gpu_campaign.merge_parts(tmp_path / files[0])
    loaded = load_weights(merged, device="cpu")
    x = torch.randn(2, 1, 48, 48)
    model.eval()
    ref, got = model(x).logits, loaded.model(x).logits
    assert float((ref - got).abs().max()) < 0.05 * float(ref.abs().max()) + 0.05  # int8 per-tensor rounding


def test_stage_probes_are_the_recipes_networks_with_the_stages_changes() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import gpu_campaign

    from ferkit.models.registry import list_models
    from ferkit.recipes.registry import get_recipe

    for stage in gpu_campaign.STAGES:
        probe, network = stage.probe, get_recipe(stage.recipe).network
        assert probe.architecture in list_models(), stage.key
        if not stage.probe_changes:  # nothing restated: the probe is what the recipe declares
            assert probe == network, stage.key
    lightcnn = next(s for s in gpu_campaign.STAGES if s.key == "lightcnn")
    assert lightcnn.probe.cfg == {"num_classes": 300, "input_size": 128} and lightcnn.probe.input_size == 128
