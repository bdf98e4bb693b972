"""Training threads follow the free cores (issue 22 item 1): the choice, the re-checks, the engine, the CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ferkit.training import threads as th
from ferkit.training.engine import train
from tests.engine_support import TinyRecipe
from tests.fixtures.datasets import make_ferplus_tree

REPO = Path(__file__).resolve().parents[1]


# ---- parsing -------------------------------------------------------------------------------------
def test_parse_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(th.ENV_THREADS, raising=False)
    assert th.parse_threads(None) == "auto" and th.parse_threads("auto") == "auto" and th.parse_threads(0) == "auto"
    assert th.parse_threads("3") == 3 and th.parse_threads(2) == 2
    monkeypatch.setenv(th.ENV_THREADS, "1")
    assert th.parse_threads(None) == 1  # the environment sets the default, an explicit value wins
    assert th.parse_threads("auto") == "auto"
    for bad in ("-1", "two", -2):
        with pytest.raises(ValueError, match="auto"):
            th.parse_threads(bad)


def test_busy_cores_threshold_and_hysteresis() -> None:
    assert th.busy_cores(0.1) == 0  # a desktop's background trickle leaves the core free
    assert th.busy_cores(0.5) == 1 and th.busy_cores(1.0) == 1 and th.busy_cores(1.4) == 2
    # once busy, a core stays busy until the load is well below the threshold
    assert th.busy_cores(0.2, currently_busy=1) == 1
    assert th.busy_cores(0.1, currently_busy=1) == 0


# ---- the probe -----------------------------------------------------------------------------------
def test_probe_subtracts_own_cpu_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Busy seconds on our cores minus our own CPU seconds, per wall second: the others' share."""
    clock = {"busy": 100.0, "own": 10.0, "t": 50.0}
    monkeypatch.setattr(th, "_proc_stat", lambda cpus: (clock["busy"], 0.0))
    monkeypatch.setattr(th, "_own_cpu_s", lambda: clock["own"])
    monkeypatch.setattr(th.time, "monotonic", lambda: clock["t"])
    probe = th.CoreProbe([0, 1])
    clock.update(busy=104.0, own=12.0, t=52.0)  # 2 s: 4 core-seconds busy, 2 of them ours
    assert probe.measure() == pytest.approx(1.0)
    clock.update(busy=108.0, own=16.0, t=54.0)  # only us now
    assert probe.measure() == pytest.approx(0.0)


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs /proc/stat")
def test_free_cores_sees_a_real_busy_loop() -> None:
    """A busy loop pinned to one of our cores is measured as a busy core (the real /proc/stat)."""
    from ferkit.bench.load import background_load

    with background_load(1):
        report = th.free_cores(0.5)
    assert report.other is not None and report.other >= th.BUSY_AT
    assert report.free == max(1, report.allowed - th.busy_cores(report.other))
    assert "busy" not in report.describe() or "cores" in report.describe()


# ---- the governor --------------------------------------------------------------------------------
class ScriptedProbe(th.CoreProbe):
    """A probe whose measurements are a script (what other programs use, in cores)."""

    def __init__(self, values: list[float], cpus: int = 4) -> None:
        self.cpus = list(range(cpus))
        self._last = (0.0, 0.0, 0.0)
        self.values = list(values)

    def measure(self):  # noqa: ANN201 - CoreProbe's signature
        return self.values.pop(0) if self.values else 0.0


def test_governor_follows_the_load() -> None:
    applied: list[int] = []
    logs: list[str] = []
    gov = th.ThreadGovernor(th.ThreadChoice(4, True, "auto"), applied.append, logs.append,
                            probe=ScriptedProbe([1.0, 1.0, 0.05, 2.6]))
    gov.WINDOW_S = 0.0
    assert gov.step_done(128) == 3  # a program took a core: 3 threads
    assert gov.step_done(128) is None  # still there: no change, no churn
    assert gov.epoch_started() == 4  # it left
    assert gov.step_done(128) == 1  # three cores busy
    assert applied == [3, 4, 1] and len(gov.changes) == 3 and "other programs use 1.0 of 4 cores" in logs[0]


def test_governor_leaves_a_fixed_count_alone() -> None:
    applied: list[int] = []
    gov = th.ThreadGovernor(th.ThreadChoice(2, False, "--threads"), applied.append, probe=ScriptedProbe([3.0]))
    gov.WINDOW_S = 0.0
    assert gov.step_done(64) is None and gov.epoch_started() is None and applied == []


def test_governor_without_a_probe_drops_a_thread_when_throughput_collapses(monkeypatch) -> None:
    applied: list[int] = []
    clock = {"t": 0.0}
    monkeypatch.setattr(th.time, "monotonic", lambda: clock["t"])
    probe = ScriptedProbe([])
    probe._last = None  # no /proc/stat here
    gov = th.ThreadGovernor(th.ThreadChoice(2, True, "auto"), applied.append, probe=probe)
    for images in (1000, 1000, 100):  # two good windows, then a tenth of the rate
        clock["t"] += gov.WINDOW_S
        gov.step_done(images)
    assert applied == [1] and "throughput fell" in gov.changes[0][2]


# ---- the engine ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ferplus") / "FER2013Train"
    make_ferplus_tree(root, n=60)
    return root


def test_engine_auto_threads_follow_the_cores(fer_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """Auto starts on the free cores, re-checks at the next epoch, reports the count in its events,
    and gives the caller's setting back at the end."""
    script = [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # free at the start, one core taken after
    monkeypatch.setattr(th, "allowed_cpus", lambda: [0, 1])
    monkeypatch.setattr(th.CoreProbe, "_sample", lambda self: (0.0, 0.0, 0.0))
    monkeypatch.setattr(th.CoreProbe, "measure", lambda self: script.pop(0) if script else 1.0)
    monkeypatch.setattr(th.time, "sleep", lambda s: None)
    monkeypatch.setattr(th.ThreadGovernor, "WINDOW_S", 1e9)  # only the epoch-start look (timing-free)
    before = torch.get_num_threads()
    events: list[dict] = []
    end = train(TinyRecipe(fer_dir, {}), tmp_path / "run", epochs=2, device="cpu", seed=0, threads="auto",
                progress_interval=0.0, on_event=events.append, json_lines=False)
    assert end["status"] == "completed" and torch.get_num_threads() == before
    start = events[0]
    assert start["event"] == "start" and start["threads"] == 2 and start["threads_auto"] is True
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["threads"] for e in epochs] == [2, 1]
    assert all(isinstance(e.get("threads"), int) for e in events if e["event"] == "step")


def test_engine_fixed_threads_are_kept(fer_dir: Path, tmp_path: Path) -> None:
    events: list[dict] = []
    train(TinyRecipe(fer_dir, {}), tmp_path / "run", epochs=1, device="cpu", seed=0, threads=1,
          progress_interval=0.0, on_event=events.append, json_lines=False)
    assert events[0]["threads"] == 1 and events[0]["threads_auto"] is False
    assert {e["threads"] for e in events if e["event"] in ("step", "epoch")} == {1}


# ---- the command line ----------------------------------------------------------------------------
def _ferkit(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "ferkit.cli", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)


@pytest.mark.parametrize("command", [["predict", "x.png"], ["eval", "--weights", "tfe-jl", "--data", "x"]])
def test_cli_threads_rejects_nonsense(command: list[str]) -> None:
    proc = _ferkit(*command, "--threads", "lots")
    assert proc.returncode == 2 and "threads must be 'auto' (also written 0) or a whole number" in proc.stderr


def test_cli_train_and_cv_take_threads_auto(fer_dir: Path) -> None:
    from ferkit.cli.cv import cv_parser
    from ferkit.cli.train import recipe_parser
    from ferkit.recipes.registry import get_recipe

    cls = get_recipe("tfe-jl/resnet12-ckplus")
    for parser, _own in (recipe_parser(cls), cv_parser(cls)):
        assert parser.parse_args(["--data", "d", "--out", "o", "--threads", "auto"]).threads == "auto"
        assert parser.parse_args(["--data", "d", "--out", "o", "--threads", "2"]).threads == 2
        assert parser.parse_args(["--data", "d", "--out", "o"]).threads is None  # the default: auto


# ---- the bench row -------------------------------------------------------------------------------
def test_bench_train_rate_and_busy_core_table() -> None:
    from ferkit.bench.training import train_rate
    from ferkit.cli.bench import format_tables
    from ferkit.bench.stats import environment

    row = train_rate("tfe-jl/resnet12-ckplus", 1, seconds=0.3)
    assert row["img_per_s"] > 0 and row["threads_start"] == row["threads_end"] == 1 and row["batch"] == 128
    busy = {"recipe": "tfe-jl/resnet12-ckplus", "allowed_cpus": [0, 1], "cpu_count": 2, "goal": "<= 2",
            "idle_over_busy": 1.5, "idle_over_busy_low_priority": 1.1,
            "rows": [{"name": "idle, default (--threads auto)", **row},
                     {"name": "one busy core, default (--threads auto)", "error": "timed out"}]}
    text = format_tables({"environment": environment(), "training_busy_core": busy})
    assert "| idle, default (--threads auto) | 1 -> 1 |" in text and "error: timed out" in text
    assert "idle / busy img/s with the default settings: 1.5" in text


def test_probe_can_count_its_own_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dialog's probe: the app's own CPU use competes with a training subprocess, so it counts."""
    clock = {"busy": 100.0, "own": 10.0, "t": 50.0}
    monkeypatch.setattr(th, "_proc_stat", lambda cpus: (clock["busy"], 0.0))
    monkeypatch.setattr(th, "_own_cpu_s", lambda: clock["own"])
    monkeypatch.setattr(th.time, "monotonic", lambda: clock["t"])
    probe = th.CoreProbe([0, 1], count_own=True)
    clock.update(busy=104.0, own=12.0, t=52.0)
    assert probe.measure() == pytest.approx(2.0)


def test_busy_core_rows_take_turns_and_report_medians(monkeypatch: pytest.MonkeyPatch) -> None:
    import ferkit.bench.training as bt

    calls: list[tuple] = []
    rates = iter([600, 300, 550, 100, 90, 700, 320, 560, 120, 80])  # two rounds of five rows

    def fake(threads, seconds, load_cores, env=None, recipe=bt.BUSY_CORE_RECIPE, load_nice=0):
        calls.append((threads, load_cores, load_nice, (env or {}).get("OMP_WAIT_POLICY")))
        rate = next(rates)
        if rate == 90:
            return {"error": "timed out", "background_load_cores": load_cores}
        return {"img_per_s": float(rate), "threads_start": 1, "threads_end": 1, "background_load_cores": load_cores}

    monkeypatch.setattr(bt, "_rate_in_child", fake)
    out = bt.busy_core_rows(seconds=1.0, load_cores=1, repeats=2)
    assert [c[1] for c in calls[:5]] == [0, 1, 1, 1, 1] and calls[:5] == calls[5:]  # the rows take turns
    assert calls[2][2] == 19 and calls[4][3] == "PASSIVE"
    rows = {r["name"]: r for r in out["rows"]}
    idle = rows["idle, default (--threads auto)"]
    assert idle["img_per_s"] == 650.0 and idle["img_per_s_runs"] == [600.0, 700.0]
    assert out["idle_over_busy"] == round(650 / 310, 2)
    passive = out["rows"][4]
    assert passive["img_per_s_runs"] == [80.0]  # the failed run is left out, not counted as 0
