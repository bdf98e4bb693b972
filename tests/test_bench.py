"""`ferkit bench` machinery on tiny settings (the benchmark itself is not a test; these check its plumbing)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ferkit.bench import models as bench_models
from ferkit.bench import training as bench_training
from ferkit.bench.stats import environment, summary, time_calls
from ferkit.cli.bench import format_tables
from ferkit.paths import samples_dir
from ferkit.training.recipe import NetSpec


def test_summary_known_values() -> None:
    s = summary([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["median"] == 3.0 and s["min"] == 1.0 and s["max"] == 100.0 and s["n"] == 5
    assert s["p95"] == pytest.approx(np.percentile([1, 2, 3, 4, 100], 95), abs=1e-3)
    assert summary([])["median"] is None


def test_time_calls_counts_and_stops_early() -> None:
    calls = []
    times = time_calls(lambda: calls.append(1), repeat=7, warmup=2)
    assert len(times) == 7 and len(calls) == 9 and all(t >= 0 for t in times)
    slow = time_calls(lambda: torch.ones(1), repeat=1000, warmup=0, max_time_s=0.0, min_calls=3)
    assert len(slow) == 3


def test_environment_records_versions_threads() -> None:
    env = environment()
    assert env["torch_threads"] == torch.get_num_threads()
    assert env["versions"]["torch"] == torch.__version__ and "onnxruntime" in env["versions"]


def test_every_recipe_declares_its_training_network() -> None:
    from ferkit.recipes.registry import get_recipe, list_recipes

    real = [r for r in list_recipes() if not r.startswith("test-")]
    missing = [r for r in real if get_recipe(r).network is None]
    assert not missing, f"these recipes declare no network (Recipe.network): {missing}"


def test_training_throughput_small(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = NetSpec("resnet12_fer", {"num_classes": 7}, 48, 16, True)
    row = bench_training.bench_network(spec, torch.device("cpu"), steps=2)
    assert row["img_per_s"]["n"] == 2 and row["img_per_s"]["median"] > 0
    assert row["input"] == [1, 48, 48] and row["channels_last"]
    # channels_last recipes are also measured in plain fp32, the baseline of the fast-path ratio
    assert row["img_per_s_fp32_plain"]["n"] == 2
    assert row["fast_path_speedup"] == pytest.approx(
        row["img_per_s_bf16"]["median"] / row["img_per_s_fp32_plain"]["median"], abs=0.01)


def test_model_bench_torch_and_onnx_small(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(bench_models, "LATENCY_REPEAT", 3)
    monkeypatch.setattr(bench_models, "THROUGHPUT_BATCH", 4)
    monkeypatch.setattr(bench_models, "THROUGHPUT_RUNS", 2)
    (bm,) = bench_models.bench_models_list(["resnet12_fer"])
    assert not bm.trained
    row = bench_models.bench_model(bm, torch.device("cpu"), workdir=tmp_path)
    for engine in ("torch", "onnx"):
        assert row[engine]["latency_ms_batch1"]["n"] == 3
        assert row[engine]["throughput_batch"] == 4 and row[engine]["throughput_img_per_s"]["n"] == 2
    assert row["onnx_speedup_batch1"] > 0
    report = {"environment": environment(), "models": [row], "wall_time_s": 1.0}
    table = format_tables(report)
    assert "| resnet12_fer (untrained) | cpu |" in table
    json.dumps(report)  # serialisable


def test_pipeline_on_sample_video_few_frames() -> None:
    pytest.importorskip("mediapipe")
    from ferkit.bench.pipeline import run

    video = samples_dir() / "expressions_pexels_640x360.mp4"
    if not video.is_file():
        pytest.skip("sample video missing")
    r = run(video, weights="resnet12_fer", frames=3, passes=1, warmup_frames=1)
    assert r["resolution"] == [640, 360] and r["fps"]["n"] == 1 and r["fps"]["median"] > 0
    assert set(r["stage_ms"]) == {"decode", "detect", "align", "infer", "verify", "draw"}
    assert all(s["n"] == 3 for s in r["stage_ms"].values())
    assert r["frame_ms"]["n"] == 3 and r["fps_at_median_frame"] > 0 and r["threads"] == 1
    assert r["faces"] == "tracked" and r["face_path_stats"]["frames"] == 4  # the live path: detector + flow
    assert r["faces_per_frame"]["median"] == 1.0  # one woman in every frame
    assert r["rss_mb"]["peak"] >= r["rss_mb"]["before_models"] > 0


def test_pipeline_many_faces_under_background_load_in_a_child() -> None:
    pytest.importorskip("mediapipe")
    pytest.importorskip("onnxruntime")
    from ferkit.bench.pipeline import load_ratio, run_in_child

    loaded = run_in_child(load_cores=1, video=samples_dir() / "multi_face.jpg", weights="resnet12_fer", frames=2,
                          passes=1, faces="tracked", engine="auto", threads=1, detect_every=5)
    assert "error" not in loaded, loaded
    assert loaded["background_load_cores"] == 1 and loaded["faces_per_frame"]["median"] >= 4
    assert loaded["engine"] == "onnx" and loaded["frame_ms"]["n"] == 2
    ratio = load_ratio({"frame_ms": {"median": 10.0, "p95": 20.0}}, {"frame_ms": {"median": 12.0, "p95": 30.0}})
    assert ratio == {"goal": 1.5, "frame_ms_median": 1.2, "frame_ms_p95": 1.5}


def test_per_face_figures_per_engine(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from ferkit.models.registry import create_model
    from ferkit.models.weights import Preprocessing, Weights

    monkeypatch.setenv("FERKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(bench_models, "LATENCY_REPEAT", 3)
    model = create_model("resnet12_fer")
    w = Weights(name="t", architecture="resnet12_fer", classes=[f"c{i}" for i in range(model.num_classes)],
                preprocessing=Preprocessing(), tta="flip")
    ckpt = tmp_path / "c.pt"
    torch.save({"weights_meta": w.to_dict(), "modules": {"model": model.state_dict()}}, ckpt)
    rows = bench_models.per_face(str(ckpt), engines=("torch", "onnx", "onnx-int8"),
                                 calibration=tmp_path / "no-such-folder")
    for engine in ("torch", "onnx"):
        assert rows[engine]["engine"] == engine and rows[engine]["tta_card"] == "flip"
        assert rows[engine]["ms"]["n"] == 3 and rows[engine]["ms_card_tta"]["median"] > 0
    assert "calibration folder" in rows["onnx-int8"]["error"]  # reported, not fatal


def test_tables_and_goals_from_a_report() -> None:
    from ferkit.cli.bench import goals

    frame = {"median": 12.5, "p95": 20.0, "min": 10.0, "max": 30.0, "n": 100}
    stages = {k: frame for k in ("decode", "detect", "align", "infer", "draw")}
    row = {"name": "1 face, live path", "engine": "onnx", "frame_ms": frame, "fps_at_median_frame": 80.0,
           "fps": {"median": 78.0, "min": 77.0, "max": 79.0}, "stage_ms": stages, "faces_per_frame": {"median": 1.0},
           "rss_mb": {"peak": 300.0}, "background_load_cores": 0}
    per_face = {"torch": {"ms": frame, "ms_card_tta": frame, "tta_card": "flip"}, "onnx-int8": {"error": "no data"}}
    model_row = {"model": "tfe-jl", "device": "cpu", "trained": True, "torch": {}, "onnx": {}, "per_face_ms": per_face}
    report = {"environment": environment(), "wall_time_s": 1.0, "models": [model_row],
              "pipeline": [row, {**row, "name": "1 face, live path, under load", "background_load_cores": 1}],
              "pipeline_load_ratio": {"1 face": {"goal": 1.5, "frame_ms_median": 1.1, "frame_ms_p95": 1.3}},
              "agreement": {"reference": "every_frame_mesh", "weights": "tfe-jl", "engine": "onnx", "detect_every": 5,
                            "modes": {"tracked": {"frames": 472, "agreement": 0.99, "detector_runs": 95}}}}
    table = format_tables(report)
    assert "| 1 face, live path | onnx | 12.5 (10-30) |" in table and "x1.1 (median)" in table
    assert "| tracked | 472 | 99.00% | - | 95 |" in table
    assert "| tfe-jl | 12.5 (10-30) | - | - | flip | 12.5 (10-30) | - | - |" in table
    g = goals(report)
    assert g["fps_1_face_median >= 60"] == 80.0 and g["load_ratio_1_face <= 1.5"] == 1.1
    assert g["agreement_tracked >= 0.98"] == 0.99 and g["fps_5_faces_median >= 30"] is None


def test_child_rows_carry_their_load_and_errors_stay_rows() -> None:
    import sys

    from ferkit.bench.load import json_row_in_child

    ok = json_row_in_child([sys.executable, "-c", "print('noise'); print('{\"rate\": 3}')"], timeout_s=60)
    assert ok == {"rate": 3, "background_load_cores": 0}
    loaded = json_row_in_child([sys.executable, "-c", "print('{\"rate\": 1}')"], timeout_s=60, load_cores=1, load_nice=5)
    assert loaded["rate"] == 1 and loaded["background_load_nice"] == 5 and len(loaded["background_load_cpus"]) == 1
    failed = json_row_in_child([sys.executable, "-c", "import sys; sys.exit('broken child')"], timeout_s=60)
    assert failed["error"] == "broken child" and failed["background_load_cores"] == 0
    slow = json_row_in_child([sys.executable, "-c", "import time; time.sleep(5)"], timeout_s=0.5)
    assert slow["error"].startswith("timed out")
