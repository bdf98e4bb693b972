"""`ferkit bench [--json]`: measured speed of the models, the live pipeline and training (a benchmark, not a test).

Sections (``--only`` picks some):

- ``models``: per face (one uint8 crop through ``Predictor``, preprocessing included, one thread)
  for every shipped model and engine (torch, ONNX Runtime, int8 ONNX where calibration crops are
  available), and the network alone: batch-1 latency (one thread) and batch-64 throughput (all
  cores), CPU and CUDA when present.
- ``pipeline``: the live loop (:mod:`ferkit.bench.pipeline`) on the 640x360 sample video (1 face)
  and on ``multi_face.jpg`` looped as a video (5 faces): frame time median and p95, fps, stages
  and peak RSS; each idle and next to a one-core busy loop (:mod:`ferkit.bench.load`), with the
  loaded/idle ratio (goal <= 1.5); plus face mesh on every frame, a landmarks panel open, the
  torch engine, and FERSNet synthesis.
- ``agreement``: labels of the fast face path against detection + mesh on every frame, frame by
  frame on the sample video (:mod:`ferkit.bench.agreement`; goal >= 98 %). Not a timing.
- ``training``: images/s of each recipe's main network; then "training under one busy core"
  (:func:`ferkit.bench.training.busy_core_rows`): the CK+ network with the default settings
  (``--threads auto``) idle and next to a ``--load-cores`` busy loop, the old default (one thread
  per core) under the same load, and its passive OpenMP wait policy (goal: busy within 2x of idle).

Every figure is a median over repeated runs with min and max; the JSON records the device,
thread counts, library versions and the machine's load average before and after, and ``goals``
sets the issue-14 targets beside the measured values. A human table goes to stderr; ``--json``
prints the whole report on stdout.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from ferkit.cli.options import device_arg
from ferkit.errors import NotFoundError
from ferkit.utils.argtypes import non_negative_int, positive_float, positive_int

SECTIONS = ("models", "pipeline", "agreement", "training")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("bench", help="speed figures: models, pipeline, training (not a test)",
                              description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print the full report as JSON on stdout")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    p.add_argument("--models", nargs="+", default=None,
                   help="shipped weights names or architectures (default: every shipped model, plus an "
                        "untrained build of each architecture nothing ships; the paper-size fersnet only "
                        "when named)")
    p.add_argument("--pipeline-weights", default=None,
                   help="classifier of the pipeline and agreement runs (default: the one the app starts with on "
                        "this machine: ferkit-live without a GPU on <= 4 cores, else tfe-jl)")
    p.add_argument("--engine", default="auto", choices=["auto", "torch", "onnx", "onnx-int8"],
                   help="engine of the live pipeline runs (default auto: ONNX Runtime where installed)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="intra-op threads of live (few-face) inference and batch-1 latency (default 1)")
    p.add_argument("--detect-every", type=positive_int, default=5,
                   help="fast face path: run the detector every N frames, optical flow between (default 5)")
    p.add_argument("--load-cores", type=non_negative_int, default=1,
                   help="cores kept busy for the pipeline's and training's background-load runs "
                        "(default 1; 0 skips them)")
    p.add_argument("--busy-seconds", type=positive_float, default=6.0,
                   help="training section: seconds of training per busy-core run (default 6)")
    p.add_argument("--busy-repeats", type=positive_int, default=2,
                   help="training section: runs per busy-core row, taking turns; the median is reported (default 2)")
    p.add_argument("--multi-face", type=Path, default=None,
                   help="image looped as a many-face video (default resources/samples/multi_face.jpg)")
    p.add_argument("--calibration", type=Path, default=None,
                   help="face crops calibrating the int8 per-face figures (default: shared data "
                        "ferplus/FER2013Valid; skipped when absent)")
    p.add_argument("--no-int8", action="store_true", help="leave int8 ONNX out of the per-face figures")
    p.add_argument("--agreement-frames", type=positive_int, default=None,
                   help="agreement section: only the first N frames of the video (default all)")
    p.add_argument("--synthesis-weights", default=None,
                   help="FERSNet weights for the synthesis run (default: shipped fersnet weights, else fersnet_light)")
    p.add_argument("--video", type=Path, default=None, help="video (default resources/samples/expressions_pexels_640x360.mp4)")
    p.add_argument("--frames", type=positive_int, default=100, help="timed frames per pipeline pass (default 100)")
    p.add_argument("--passes", type=positive_int, default=3, help="pipeline passes per configuration (default 3)")
    p.add_argument("--recipes", nargs="+", default=None, help="training section: these recipes only")
    p.add_argument("--device", default="auto", type=device_arg, help="auto (CPU, plus CUDA when present), cpu or cuda")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON report to this file")
    p.add_argument("--keep-denormals", action="store_true",
                   help="do not flush subnormal floats to zero (shows the slow path trained weights hit)")
    p.set_defaults(func=run)


def _devices(spec: str) -> list[Any]:
    import torch

    if spec == "auto":
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    from ferkit.models.weights import resolve_device

    return [resolve_device(spec)]


def _synthesis_default() -> str:
    """The first shipped weights with a synthesis stream, else the first CPU-sized architecture with one."""
    from ferkit.models.registry import architectures_with
    from ferkit.models.weights import weights_with

    return (weights_with("synthesis") or architectures_with("synthesis", cpu_sized=True))[0]


def run(args: argparse.Namespace) -> int:
    from ferkit.bench.stats import environment, flush_denormals

    if not args.keep_denormals:
        flush_denormals()

    t_start = time.perf_counter()
    if args.pipeline_weights is None:
        from ferkit.models.defaults import live_default_weights

        args.pipeline_weights = live_default_weights()
    report: dict[str, Any] = {"command": "ferkit bench " + " ".join(sys.argv[2:]), "environment": environment()}
    devices = _devices(args.device)

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    sections: dict[str, Callable[[], dict[str, Any]]] = {
        "models": lambda: {"models": _models_section(args, devices, say)},
        "pipeline": lambda: _pipeline_section(args, say),
        "agreement": lambda: {"agreement": _agreement_section(args, say)},
        "training": lambda: _training_section(args, devices, say),
    }
    for name, section in sections.items():
        if name in args.only:
            report.update(section())
            if args.out and name != "training":  # a section's figures survive a later one failing or stopped
                from ferkit.utils.io import atomic_write_text

                atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    report["goals"] = goals(report)
    report["environment_after"] = {"load_average_1_5_15": environment()["load_average_1_5_15"]}
    report["wall_time_s"] = round(time.perf_counter() - t_start, 1)
    print(format_tables(report), file=sys.stderr)
    text = json.dumps(report, indent=2)
    if args.out:
        from ferkit.utils.io import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    if args.json:
        print(text)
    return 0


def _models_section(args: argparse.Namespace, devices: list[Any], say: Callable[[str], None]) -> list[dict[str, Any]]:
    from ferkit.bench.models import bench_model, bench_models_list
    from ferkit.export.onnx import default_calibration_dir

    calibration = args.calibration or default_calibration_dir()
    per_face_engines = ("torch", "onnx") + (() if args.no_int8 or not calibration.is_dir() else ("onnx-int8",))
    rows = []
    for bm in bench_models_list(args.models):
        for dev in devices:
            say(f"model {bm.label} on {dev}")
            rows.append(bench_model(bm, dev, engines=("torch", "onnx"), threads=args.threads,
                                    per_face_engines=per_face_engines, calibration=calibration))
    return rows


def _pipeline_section(args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    """The ``pipeline`` rows and ``pipeline_load_ratio`` of the report."""
    from ferkit.bench.pipeline import load_ratio, run_in_child
    from ferkit.paths import samples_dir

    video = args.video or samples_dir() / "expressions_pexels_640x360.mp4"
    multi = args.multi_face or samples_dir() / "multi_face.jpg"
    for path in (video, multi):
        if not path.is_file():
            raise NotFoundError(f"benchmark input {path} is missing")
    synth = args.synthesis_weights or _synthesis_default()
    live = {"engine": args.engine, "faces": "tracked", "synthesis": None}
    configs: list[tuple[str, Path, dict[str, Any], int]] = [
        ("1 face, live path", video, live, 0),
        ("1 face, live path, under load", video, live, args.load_cores),
        ("5 faces, live path", multi, live, 0),
        ("5 faces, live path, under load", multi, live, args.load_cores),
        ("1 face, live path, detector eyes (no mesh)", video, {**live, "faces": "tracked-detector-eyes"}, 0),
        ("5 faces, live path, detector eyes (no mesh)", multi, {**live, "faces": "tracked-detector-eyes"}, 0),
        ("1 face, landmarks panel open (mesh every frame)", video, {**live, "faces": "tracked-mesh"}, 0),
        ("1 face, detector + mesh every frame (former live path)", video, {**live, "faces": "mesh"}, 0),
        ("1 face, torch engine, live path", video, {**live, "engine": "torch"}, 0),
        ("1 face, torch engine + synthesis", video, {"engine": "torch", "faces": "mesh", "synthesis": synth}, 0),
    ]
    rows = []
    for name, source, cfg, load in configs:
        if "under load" in name and load <= 0:
            continue
        say(f"pipeline: {name}")
        row = run_in_child(video=source, weights=args.pipeline_weights, frames=args.frames, passes=args.passes,
                           device="cpu", threads=args.threads, detect_every=args.detect_every,
                           keep_denormals=args.keep_denormals, load_cores=load, **cfg)
        rows.append({"name": name, **row})
    by_name = {r["name"]: r for r in rows}
    ratios = {}
    for what in ("1 face", "5 faces"):
        idle, loaded = by_name.get(f"{what}, live path"), by_name.get(f"{what}, live path, under load")
        if idle and loaded and "error" not in idle and "error" not in loaded:
            ratios[what] = load_ratio(idle, loaded)
    return {"pipeline": rows, "pipeline_load_ratio": ratios}


def _agreement_section(args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    from ferkit.bench.agreement import run as run_agreement
    from ferkit.paths import samples_dir

    video = args.video or samples_dir() / "expressions_pexels_640x360.mp4"
    say("agreement of the fast face path with detection + mesh on every frame")
    return run_agreement(video, args.pipeline_weights, args.engine, args.detect_every,
                         max_frames=args.agreement_frames, say=say)


def _training_section(args: argparse.Namespace, devices: list[Any], say: Callable[[str], None]) -> dict[str, Any]:
    """Each recipe's training img/s, then (on CPU) the same network next to busy cores (issue 22)."""
    from ferkit.bench.training import bench_training, busy_core_rows

    rows = []
    for dev in devices:
        say(f"training throughput on {dev}")
        rows.extend(bench_training(args.recipes, dev))
    out: dict[str, Any] = {"training": rows}
    if args.load_cores > 0 and any(d.type == "cpu" for d in devices):
        say(f"training under {args.load_cores} busy core(s)")
        out["training_busy_core"] = busy_core_rows(args.busy_seconds, args.load_cores, args.busy_repeats)
    return out


def goals(report: dict[str, Any]) -> dict[str, Any]:
    """Issue 14's targets beside what this run measured (None where the section did not run)."""
    rows = {r.get("name"): r for r in report.get("pipeline", []) if "error" not in r}
    one, five = rows.get("1 face, live path"), rows.get("5 faces, live path")
    ratio = (report.get("pipeline_load_ratio") or {}).get("1 face", {})
    tracked = (report.get("agreement") or {}).get("modes", {}).get("tracked", {})
    five_ratio = (report.get("pipeline_load_ratio") or {}).get("5 faces", {})
    return {
        "fps_1_face_median >= 60": one and one.get("fps_at_median_frame"),
        "frame_ms_1_face_p95 <= 33": one and one["frame_ms"]["p95"],
        "fps_5_faces_median >= 30": five and five.get("fps_at_median_frame"),
        "load_ratio_1_face <= 1.5": ratio.get("frame_ms_median"),
        "load_ratio_5_faces <= 1.5": five_ratio.get("frame_ms_median"),
        "agreement_tracked >= 0.98": tracked.get("agreement"),
        "agreement_tracked_smoothed >= 0.98": tracked.get("agreement_smoothed"),
        "training_busy_core_idle_over_busy <= 2": (report.get("training_busy_core") or {}).get("idle_over_busy"),
        "agreement_floor (reference with 0.25 % eye jitter)": (report.get("agreement") or {}).get("modes", {})
        .get("reference_eye_jitter", {}).get("agreement"),
    }


def _fmt(s: Any, key: str = "median") -> str:
    if not isinstance(s, dict) or s.get(key) is None:
        return "-"
    lo, hi = s.get("min"), s.get("max")
    return f"{s[key]:g} ({lo:g}-{hi:g})" if lo is not None else f"{s[key]:g}"


def _per_face_table(rows: list[dict[str, Any]]) -> list[str]:
    """The per-face latency table of the models section (nothing when no row measured it)."""
    if not rows:
        return []
    out = ["| per face (1 crop, 1 thread, preprocessing incl.) | torch ms | ONNX ms | ONNX int8 ms | "
           "card TTA | torch ms (TTA) | ONNX ms (TTA) | int8 ms (TTA) |",
           "|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        pf = r["per_face_ms"]

        def cell(engine: str, key: str = "ms", pf: dict[str, Any] = pf) -> str:
            row = pf.get(engine, {"error": "not measured"})
            return "-" if "error" in row else _fmt(row.get(key))

        tta = next((v.get("tta_card") for v in pf.values() if "tta_card" in v), "-")
        out.append(f"| {r['model']} | {cell('torch')} | {cell('onnx')} | {cell('onnx-int8')} | {tta} | "
                   f"{cell('torch', 'ms_card_tta')} | {cell('onnx', 'ms_card_tta')} | "
                   f"{cell('onnx-int8', 'ms_card_tta')} |")
    return out + [""]


def format_tables(report: dict[str, Any]) -> str:
    """Markdown tables of the report (what the README shows): median (min-max)."""
    env = report["environment"]
    out = [f"machine: {env['cpu']} ({env['cpu_count']} CPUs), torch threads {env['torch_threads']}, "
           f"CUDA {env['cuda'] or 'none'}, load average {env['load_average_1_5_15']} -> "
           f"{report.get('environment_after', {}).get('load_average_1_5_15')}; torch {env['versions']['torch']}, "
           f"onnxruntime {env['versions']['onnxruntime']}; wall {report.get('wall_time_s')} s", ""]
    if report.get("models"):
        out += _per_face_table([r for r in report["models"] if r.get("per_face_ms")])
        out += ["| model | device | torch b1 ms | torch b1 p95 | ORT b1 ms | ORT b1 p95 | torch img/s | ORT img/s |",
                "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in report["models"]:
            t, o = r.get("torch", {}), r.get("onnx", {})
            name = r["model"]
            out.append(f"| {name} | {r['device']} | {_fmt(t.get('latency_ms_batch1'))} | "
                       f"{_fmt(t.get('latency_ms_batch1'), 'p95')} | {_fmt(o.get('latency_ms_batch1'))} | "
                       f"{_fmt(o.get('latency_ms_batch1'), 'p95')} | {_fmt(t.get('throughput_img_per_s'))}"
                       f"{'' if t.get('throughput_batch', 64) == 64 else ' @b' + str(t.get('throughput_batch'))} | "
                       f"{_fmt(o.get('throughput_img_per_s'))}"
                       f"{'' if o.get('throughput_batch', 64) == 64 else ' @b' + str(o.get('throughput_batch'))} |"
                       + (f" ORT error: {o['error'][:60]}" if 'error' in o else ""))
        out.append("")
    if report.get("pipeline"):
        out += ["| pipeline | engine | frame ms median | frame ms p95 | fps (median frame) | fps per pass | "
                "detect ms | align ms | infer ms | synthesis ms | draw ms | faces | peak RSS MB |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in report["pipeline"]:
            name = r.get("name") or f"{r.get('engine')} {r.get('synthesis') or ''}"
            if "error" in r:
                out.append(f"| {name} | error: {r['error'][:80]} |")
                continue
            st = r["stage_ms"]
            out.append(f"| {name} | {r['engine']} | {_fmt(r['frame_ms'])} | {_fmt(r['frame_ms'], 'p95')} | "
                       f"{r.get('fps_at_median_frame')} | {_fmt(r['fps'])} | {_fmt(st.get('detect'))} | "
                       f"{_fmt(st.get('align'))} | {_fmt(st.get('infer'))} | {_fmt(st.get('synthesis'))} | "
                       f"{_fmt(st.get('draw'))} | {r['faces_per_frame'].get('median')} | {r['rss_mb']['peak']} |")
        for what, ratio in (report.get("pipeline_load_ratio") or {}).items():
            cores = max(r.get("background_load_cores", 0) for r in report["pipeline"]) or 1
            out.append(f"\nunder a {cores}-core background load, {what}: frame time x{ratio.get('frame_ms_median')} "
                       f"(median), x{ratio.get('frame_ms_p95')} (p95); goal <= {ratio['goal']}")
        out.append("")
    if report.get("agreement"):
        a = report["agreement"]
        out += [f"| face path vs {a['reference']} ({a['weights']}, {a['engine']}, detect every {a['detect_every']}) | "
                "frames | same labels | same smoothed labels | detector runs |", "|---|---:|---:|---:|---:|"]
        for mode, m in a["modes"].items():
            smooth = m.get("agreement_smoothed")
            out.append(f"| {mode} | {m['frames']} | {m['agreement']:.2%} | "
                       f"{'-' if smooth is None else format(smooth, '.2%')} | {m.get('detector_runs', m['frames'])} |")
        out.append("")
    if report.get("training"):
        out += ["| recipe | network | batch | device | plain fp32 img/s | fp32 img/s (recipe layout) | bf16 img/s "
                "| bf16 / fp32 | fast path / plain fp32 |",
                "|---|---|---:|---|---:|---:|---:|---:|---:|"]
        for r in report["training"]:
            if "error" in r:
                out.append(f"| {r['recipe']} | {r.get('architecture', '-')} | | | error: {r['error'][:60]} | | | | |")
                continue
            batch = f"{r['batch']}" + ("" if r["batch"] == r.get("recipe_batch", r["batch"]) else f" (recipe {r['recipe_batch']})")
            layout = "channels_last" if r.get("channels_last") else "contiguous"
            out.append(f"| {r['recipe']} | {r['architecture']} {r['input'][1]}px | {batch} | {r['device']} | "
                       f"{_fmt(r.get('img_per_s_fp32_plain'))} | {_fmt(r['img_per_s'])} ({layout}) | "
                       f"{_fmt(r.get('img_per_s_bf16'))} | {r.get('bf16_speedup', '-')} | "
                       f"{r.get('fast_path_speedup', '-')} |")
        out.append("")
    busy = report.get("training_busy_core")
    if busy:
        out += [f"| training under one busy core ({busy['recipe']}, allowed CPUs {busy['allowed_cpus']}) | "
                "threads (start -> end) | img/s median (min-max) |", "|---|---|---:|"]
        for r in busy["rows"]:
            if "error" in r:
                out.append(f"| {r['name']} | error: {r['error'][:60]} | |")
                continue
            each = r.get("img_per_s_runs") or []
            spread = f" ({min(each):g}-{max(each):g})" if len(each) > 1 else ""
            out.append(f"| {r['name']} | {r['threads_start']} -> {r['threads_end']} | {r['img_per_s']:g}{spread} |")
        out.append(f"\nidle / busy img/s with the default settings: {busy['idle_over_busy']} (busy loop at equal "
                   f"priority), {busy.get('idle_over_busy_low_priority')} (nice 19 busy loop); goal {busy['goal']}")
    return "\n".join(out)
