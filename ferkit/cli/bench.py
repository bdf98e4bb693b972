"""`ferkit bench [--json]`: measured speed of the models, the live pipeline and training (a benchmark, not a test).

Sections (``--only`` picks some): ``models`` (batch-1 latency median/p95 and batch-64 throughput,
torch eager vs ONNX Runtime, CPU and CUDA when present), ``pipeline`` (end-to-end fps, per-stage
latency and peak RSS on the sample video at its native resolution, with and without FERSNet
synthesis, torch and ONNX engines, face mesh on and off), ``training`` (images/s of each recipe's
main network). Every figure is a median over repeated runs with min and max; the JSON records
the device, thread counts, library versions and the machine's load average before and after.
A human table goes to stderr; ``--json`` prints the whole report on stdout.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

SECTIONS = ("models", "pipeline", "training")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("bench", help="speed figures: models, pipeline, training (not a test)",
                              description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print the full report as JSON on stdout")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    p.add_argument("--models", nargs="+", default=None,
                   help="shipped weights names or architectures (default: every shipped model, plus an "
                        "untrained build of each architecture nothing ships; the paper-size fersnet only "
                        "when named)")
    p.add_argument("--pipeline-weights", default="tfe-jl", help="classifier of the pipeline runs (default tfe-jl)")
    p.add_argument("--synthesis-weights", default=None,
                   help="FERSNet weights for the synthesis run (default: shipped fersnet weights, else fersnet_light)")
    p.add_argument("--video", type=Path, default=None, help="video (default resources/samples/expressions_pexels_640x360.mp4)")
    p.add_argument("--frames", type=int, default=100, help="timed frames per pipeline pass (default 100)")
    p.add_argument("--passes", type=int, default=3, help="pipeline passes per configuration (default 3)")
    p.add_argument("--recipes", nargs="+", default=None, help="training section: these recipes only")
    p.add_argument("--device", default="auto", help="auto (CPU, plus CUDA when present), cpu or cuda")
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
    from ferkit.models.weights import get_weights, list_weights

    for name in list_weights():
        try:
            if get_weights(name).architecture.startswith("fersnet"):
                return name
        except Exception:  # noqa: BLE001 - a broken card is someone else's test failure
            continue
    return "fersnet_light"


def run(args: argparse.Namespace) -> int:
    import torch

    from ferkit.bench.stats import environment, flush_denormals
    from ferkit.paths import samples_dir

    if not args.keep_denormals:
        flush_denormals()

    t_start = time.perf_counter()
    report: dict[str, Any] = {"command": "ferkit bench " + " ".join(sys.argv[2:]), "environment": environment()}
    devices = _devices(args.device)

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    def save_partial() -> None:  # a section's figures survive a later section failing or being stopped
        if args.out:
            from ferkit.utils.io import atomic_write_text

            atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")

    if "models" in args.only:
        from ferkit.bench.models import bench_model, bench_models_list

        rows = []
        for bm in bench_models_list(args.models):
            for dev in devices:
                say(f"model {bm.label} on {dev}")
                rows.append(bench_model(bm, dev, engines=("torch", "onnx")))
        report["models"] = rows
        save_partial()
    if "pipeline" in args.only:
        from ferkit.bench.pipeline import run_in_child

        video = args.video or samples_dir() / "expressions_pexels_640x360.mp4"
        if not video.is_file():
            raise FileNotFoundError(f"benchmark video {video} is missing")
        synth = args.synthesis_weights or _synthesis_default()
        threads = torch.get_num_threads()
        configs = [
            {"engine": "torch", "landmarks": True, "synthesis": None},
            {"engine": "onnx", "landmarks": True, "synthesis": None},
            {"engine": "onnx", "landmarks": False, "synthesis": None},
            {"engine": "torch", "landmarks": True, "synthesis": synth},
        ]
        rows = []
        for cfg in configs:
            say(f"pipeline {args.pipeline_weights} {cfg}")
            rows.append(run_in_child(video=video, weights=args.pipeline_weights, frames=args.frames,
                                     passes=args.passes, device="cpu", threads=threads,
                                     keep_denormals=args.keep_denormals, **cfg))
        report["pipeline"] = rows
        save_partial()
    if "training" in args.only:
        from ferkit.bench.training import bench_training

        rows = []
        for dev in devices:
            say(f"training throughput on {dev}")
            rows.extend(bench_training(args.recipes, dev))
        report["training"] = rows
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


def _fmt(s: Any, key: str = "median") -> str:
    if not isinstance(s, dict) or s.get(key) is None:
        return "-"
    lo, hi = s.get("min"), s.get("max")
    return f"{s[key]:g} ({lo:g}-{hi:g})" if lo is not None else f"{s[key]:g}"


def format_tables(report: dict[str, Any]) -> str:
    """Markdown tables of the report (what the README shows): median (min-max)."""
    env = report["environment"]
    out = [f"machine: {env['cpu']} ({env['cpu_count']} CPUs), torch threads {env['torch_threads']}, "
           f"CUDA {env['cuda'] or 'none'}, load average {env['load_average_1_5_15']} -> "
           f"{report.get('environment_after', {}).get('load_average_1_5_15')}; torch {env['versions']['torch']}, "
           f"onnxruntime {env['versions']['onnxruntime']}; wall {report.get('wall_time_s')} s", ""]
    if report.get("models"):
        out += ["| model | device | torch b1 ms | torch b1 p95 | ORT b1 ms | ORT b1 p95 | torch img/s | ORT img/s |",
                "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in report["models"]:
            t, o = r.get("torch", {}), r.get("onnx", {})
            name = r["model"] + ("" if r["trained"] else "")
            out.append(f"| {name} | {r['device']} | {_fmt(t.get('latency_ms_batch1'))} | "
                       f"{_fmt(t.get('latency_ms_batch1'), 'p95')} | {_fmt(o.get('latency_ms_batch1'))} | "
                       f"{_fmt(o.get('latency_ms_batch1'), 'p95')} | {_fmt(t.get('throughput_img_per_s'))}"
                       f"{'' if t.get('throughput_batch', 64) == 64 else ' @b' + str(t.get('throughput_batch'))} | "
                       f"{_fmt(o.get('throughput_img_per_s'))}"
                       f"{'' if o.get('throughput_batch', 64) == 64 else ' @b' + str(o.get('throughput_batch'))} |"
                       + (f" ORT error: {o['error'][:60]}" if 'error' in o else ""))
        out.append("")
    if report.get("pipeline"):
        out += ["| pipeline | fps | decode ms | detect ms | align ms | infer ms | synthesis ms | draw ms | peak RSS MB |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in report["pipeline"]:
            if "error" in r:
                out.append(f"| {r.get('engine')} {r.get('synthesis') or ''} | error: {r['error'][:80]} |")
                continue
            st = r["stage_ms"]
            name = (f"{r['weights']} {r['engine']}, mesh {'on' if r['landmarks'] else 'off'}"
                    + (f", + {r['synthesis']}" if r["synthesis"] else ""))
            out.append(f"| {name} | {_fmt(r['fps'])} | {_fmt(st.get('decode'))} | {_fmt(st.get('detect'))} | "
                       f"{_fmt(st.get('align'))} | {_fmt(st.get('infer'))} | {_fmt(st.get('synthesis'))} | "
                       f"{_fmt(st.get('draw'))} | {r['rss_mb']['peak']} |")
        out.append("")
    if report.get("training"):
        out += ["| recipe | network | batch | device | fp32 img/s | bf16 img/s | bf16 / fp32 |",
                "|---|---|---:|---|---:|---:|---:|"]
        for r in report["training"]:
            if "error" in r:
                out.append(f"| {r['recipe']} | {r.get('architecture', '-')} | | | error: {r['error'][:60]} | | |")
                continue
            batch = f"{r['batch']}" + ("" if r["batch"] == r.get("recipe_batch", r["batch"]) else f" (recipe {r['recipe_batch']})")
            out.append(f"| {r['recipe']} | {r['architecture']} {r['input'][1]}px | {batch} | {r['device']} | "
                       f"{_fmt(r['img_per_s'])} | {_fmt(r.get('img_per_s_bf16'))} | {r.get('bf16_speedup', '-')} |")
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover
    from ferkit.cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))
