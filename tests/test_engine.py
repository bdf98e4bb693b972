"""The training engine on a tiny real recipe (FER+ fixture tree, CPU): train, resume, signals, DDP."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from ferkit.training import distributed
from ferkit.training.checkpoint import FORMAT, load_checkpoint
from ferkit.training.engine import EngineContext, derive_seed, train
from ferkit.training.progress import ProgressReporter
from tests.engine_support import RECIPE_NAME, TinyRecipe
from tests.fixtures.datasets import make_ferplus_tree

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def fer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ferplus") / "FER2013Train"
    make_ferplus_tree(root, n=60)  # majority vote keeps 30 of the cycled VOTE_CASES
    return root


def run_inprocess(data: Path, out: Path, epochs: int, resume: bool = False, **options) -> tuple[dict, list[dict]]:
    events: list[dict] = []
    end = train(TinyRecipe(data, options), out, epochs=epochs, device="cpu", resume=resume, seed=3,
                progress_interval=0.0, on_event=events.append, json_lines=False)
    return end, events


def model_state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["modules"]["model"]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["FERKIT_CACHE"] = "off"
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tests.engine_support", "train", RECIPE_NAME, *args]


# ---- context pieces ------------------------------------------------------------------------------
def fake_ctx(rank: int = 0, world: int = 1, seed: int = 0) -> EngineContext:
    info = distributed.DistInfo(rank, world, rank, torch.device("cpu"))
    return EngineContext(info, amp_dtype=None, seed=seed, out_dir=Path("."), reporter=ProgressReporter(enabled=False))


def test_batches_are_seeded_and_sharded_without_overlap() -> None:
    a = [b.tolist() for b in fake_ctx(seed=1).batches(50, 8, epoch=2)]
    b = [b.tolist() for b in fake_ctx(seed=1).batches(50, 8, epoch=2)]
    c = [b.tolist() for b in fake_ctx(seed=1).batches(50, 8, epoch=3)]
    assert a == b and a != c
    assert len(a) == 6 and all(len(x) == 8 for x in a)  # drop_last: 50 // 8
    # two ranks: global batch 8 -> 4 per rank, disjoint, same step count, the same 48 items overall
    r0 = [b.tolist() for b in fake_ctx(0, 2, seed=1).batches(50, 8, epoch=2)]
    r1 = [b.tolist() for b in fake_ctx(1, 2, seed=1).batches(50, 8, epoch=2)]
    assert len(r0) == len(r1) == 6 and all(len(x) == 4 for x in r0 + r1)
    flat0, flat1 = sum(r0, []), sum(r1, [])
    assert not set(flat0) & set(flat1) and len(set(flat0 + flat1)) == 48
    # no drop_last: every item is seen; ranks padded to equal length
    full = sum((b.tolist() for b in fake_ctx(seed=1).batches(50, 8, epoch=0, drop_last=False)), [])
    assert sorted(full) == list(range(50))
    p0 = sum((b.tolist() for b in fake_ctx(0, 2).batches(51, 8, 0, drop_last=False)), [])
    p1 = sum((b.tolist() for b in fake_ctx(1, 2).batches(51, 8, 0, drop_last=False)), [])
    assert len(p0) == len(p1) == 26 and set(p0) | set(p1) == set(range(51))
    assert derive_seed(1, 2) != derive_seed(2, 1)



def test_steps_per_epoch_counts_the_batches_the_context_cuts() -> None:
    """Per-step schedules are sized before training with steps_per_epoch: it must agree with batches()."""
    from ferkit.training.schedule import steps_per_epoch

    for n, batch, world in [(50, 8, 1), (50, 8, 2), (51, 7, 2), (5, 8, 1), (882, 32, 1), (100, 3, 4)]:
        assert steps_per_epoch(n, batch, world) == len(list(fake_ctx(0, world).batches(n, batch, epoch=0))), (n, batch, world)

def test_step_updates_parameters_and_clips_gradients() -> None:
    ctx = fake_ctx()
    lin = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(lin.parameters(), lr=1.0)
    before = lin.weight.detach().clone()
    x = torch.randn(5, 4) * 100
    loss = lin(x).pow(2).sum()
    grad = torch.autograd.grad(loss, lin.weight, retain_graph=True)[0]
    ctx.step(loss, opt, clip_grad=0.5)
    # with SGD lr=1 the update is the clipped gradient: its global norm (weight + bias) is 0.5
    delta_w = before - lin.weight.detach()
    assert torch.allclose(delta_w / delta_w.norm(), grad / grad.norm(), atol=1e-5)
    assert delta_w.norm() <= 0.5 + 1e-5
    assert not ctx.amp and isinstance(ctx.autocast(), type(ctx.autocast()))  # CPU: AMP off



def test_one_step_of_several_optimizers_backpropagates_once_and_steps_each() -> None:
    """Two optimisers over the two halves of one model: one backward, each half moved by its own
    optimiser (SGD lr 1: the update is the gradient), stale gradients of either cleared first."""
    ctx = fake_ctx()
    a, b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=1.0), torch.optim.SGD(b.parameters(), lr=0.5)
    for p in [*a.parameters(), *b.parameters()]:
        p.grad = torch.full_like(p, 100.0)  # left over from an earlier step: must not leak in
    x = torch.randn(6, 4)
    loss = b(a(x)).pow(2).mean()
    ga, gb = torch.autograd.grad(loss, [a.weight, b.weight], retain_graph=True)
    wa, wb = a.weight.detach().clone(), b.weight.detach().clone()
    ctx.step(loss, [opt_a, opt_b])
    assert torch.allclose(wa - a.weight.detach(), ga, atol=1e-6)
    assert torch.allclose(wb - b.weight.detach(), 0.5 * gb, atol=1e-6)

# ---- training in process -------------------------------------------------------------------------
def test_train_two_epochs_writes_checkpoints_curves_and_events(fer_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    end, events = run_inprocess(fer_dir, out, epochs=2)
    assert end["status"] == "completed" and end["epoch"] == 2
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("epoch") == 2
    steps = [e for e in events if e["event"] == "step"]
    assert len(steps) == 2 * (30 // 8) and steps[0]["steps"] == 3 and steps[-1]["step"] == 3
    for e in steps:
        assert e["loss"] > 0 and 0 <= e["accuracy"] <= 1 and e["lr"] > 0 and e["images_per_s"] > 0
    ep = [e for e in events if e["event"] == "epoch"]
    assert ep[0]["epoch"] == 1 and "val_accuracy" in ep[0]["val"] and Path(ep[0]["checkpoint"]).exists()
    assert abs(ep[1]["lr"] - 0.05 * 0.7) < 1e-9  # StepLR stepped once by end_epoch, lr logged before stepping
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["format"] == FORMAT and ckpt["epoch"] == 2 and ckpt["global_step"] == 6
    assert ckpt["recipe"] == RECIPE_NAME and ckpt["extra_state"] == {"steps_seen": 6}
    assert set(ckpt["rng"]) >= {"torch", "numpy", "python"} and "model" in ckpt["schedulers"]
    meta = ckpt["weights_meta"]
    assert meta["architecture"] == "test-engine-tinycnn" and meta["epochs"] == 2
    assert meta["metrics"]["val_accuracy"] == ep[1]["val"]["val_accuracy"] and meta["wall_time_s"] >= 0
    assert (out / "best.pt").exists()
    best = load_checkpoint(out / "best.pt")
    assert best["best_val_accuracy"] == max(e["val"]["val_accuracy"] for e in ep)
    rows = (out / "curves.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss,train_accuracy") and len(rows) == 3
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))
    # refuses to overwrite a run without --resume
    with pytest.raises(ValueError, match="--resume"):
        run_inprocess(fer_dir, out, epochs=2)


def test_context_knows_the_planned_epochs_before_setup(fer_dir: Path, tmp_path: Path) -> None:
    recipe = TinyRecipe(fer_dir, {})
    train(recipe, tmp_path / "e", epochs=1, device="cpu", json_lines=False)
    assert recipe.planned_epochs == 1
    again = TinyRecipe(fer_dir, {})
    train(again, tmp_path / "e", epochs=2, device="cpu", resume=True, json_lines=False)
    assert again.planned_epochs == 2


def test_resume_asks_the_recipe_before_loading_optimizers(fer_dir: Path, tmp_path: Path) -> None:
    """A resume whose optimiser changed shape fails with the recipe's own message (load_extra_state),
    not with torch's complaint about parameter groups, because the recipe is asked first."""
    from ferkit.errors import UsageError

    train(TinyRecipe(fer_dir, {}), tmp_path / "r", epochs=1, device="cpu", json_lines=False)

    class Reshaped(TinyRecipe):
        def setup(self, ctx: Any) -> None:
            super().setup(ctx)
            head = list(self.model.fc.parameters())
            rest = [p for p in self.model.parameters() if all(p is not h for h in head)]
            self.optimizer = torch.optim.SGD([{"params": rest}, {"params": head}], lr=0.05)
            self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1)

        def load_extra_state(self, state: dict[str, Any]) -> None:
            raise UsageError("the recipe says: resume with the same optimiser")

    with pytest.raises(UsageError, match="the recipe says"):
        train(Reshaped(fer_dir, {}), tmp_path / "r", epochs=2, device="cpu", resume=True, json_lines=False)

def test_resume_in_process_matches_uninterrupted(fer_dir: Path, tmp_path: Path) -> None:
    run_inprocess(fer_dir, tmp_path / "full", epochs=3)
    run_inprocess(fer_dir, tmp_path / "part", epochs=1)
    end, events = run_inprocess(fer_dir, tmp_path / "part", epochs=3, resume=True)
    assert events[0]["start_epoch"] == 1 and events[0]["resumed"] is True
    assert end["epoch"] == 3
    a, b = model_state(tmp_path / "full" / "checkpoint.pt"), model_state(tmp_path / "part" / "checkpoint.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    full, part = load_checkpoint(tmp_path / "full" / "checkpoint.pt"), load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert full["history"][-1]["train_loss"] == part["history"][-1]["train_loss"]
    assert part["extra_state"] == full["extra_state"] and len(part["history"]) == 3
    assert full["optimizers"]["model"]["state"][0]["momentum_buffer"].equal(
        part["optimizers"]["model"]["state"][0]["momentum_buffer"])


def test_tensor_step_results_give_the_same_numbers(fer_dir: Path, tmp_path: Path) -> None:
    _, ev_float = run_inprocess(fer_dir, tmp_path / "f", epochs=1)
    _, ev_tensor = run_inprocess(fer_dir, tmp_path / "t", epochs=1, tensor_stats=True)
    ef = [e for e in ev_float if e["event"] == "epoch"][0]
    et = [e for e in ev_tensor if e["event"] == "epoch"][0]
    assert et["loss"] == pytest.approx(ef["loss"], rel=1e-6) and et["accuracy"] == ef["accuracy"]
    assert et["extra"]["L_ce"] == pytest.approx(ef["extra"]["L_ce"], rel=1e-6)
    assert all(isinstance(e["loss"], float) for e in ev_tensor if e["event"] == "step")


def test_checkpoint_write_is_atomic(fer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    run_inprocess(fer_dir, out, epochs=1)
    good = (out / "checkpoint.pt").read_bytes()
    real_save = torch.save

    def crashing_save(obj, f, *a, **k):  # writes half a file, then dies like a full disk would
        real_save(obj, f, *a, **k)
        with open(f, "r+b") as fh:
            fh.truncate(100)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        run_inprocess(fer_dir, out, epochs=2, resume=True)
    monkeypatch.undo()
    assert (out / "checkpoint.pt").read_bytes() == good
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    assert not list(out.glob(".*.tmp"))


def test_bad_data_is_a_one_line_cli_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from ferkit.cli import main

    (tmp_path / "empty").mkdir()
    rc = main(["train", RECIPE_NAME, "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "label.csv" in lines[0] and lines[0].startswith("ferkit train: error:")
    assert not (tmp_path / "o").exists()
    assert main(["train", "--list"]) == 0 and RECIPE_NAME in capsys.readouterr().out
    assert main(["train", RECIPE_NAME, "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ---- subprocess: kill, signals, torchrun ----------------------------------------------------------
def read_events_until(proc: subprocess.Popen, predicate, timeout: float = 120) -> list[dict]:
    events: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        events.append(json.loads(line))  # every stdout line must be one JSON object
        if predicate(events[-1]):
            return events
    raise AssertionError(f"condition not reached; events: {events}")


@pytest.mark.slow
def test_sigkill_between_epochs_then_resume_gives_identical_weights(fer_dir: Path, tmp_path: Path) -> None:
    run_inprocess(fer_dir, tmp_path / "full", epochs=3)
    out = tmp_path / "killed"
    proc = subprocess.Popen(cli("--data", str(fer_dir), "--out", str(out), "--epochs", "3", "--seed", "3",
                                "--device", "cpu", "--sleep", "0.3", "--progress-interval", "0"),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=cli_env(), cwd=REPO)
    try:
        read_events_until(proc, lambda e: e["event"] == "epoch" and e["epoch"] == 1)
        proc.kill()
    finally:
        proc.wait(timeout=60)
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    end, _ = run_inprocess(fer_dir, out, epochs=3, resume=True)
    assert end["epoch"] == 3
    a, b = model_state(tmp_path / "full" / "checkpoint.pt"), model_state(out / "checkpoint.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_sigint_mid_epoch_saves_and_exits_cleanly(fer_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "int"
    proc = subprocess.Popen(cli("--data", str(fer_dir), "--out", str(out), "--epochs", "3", "--device", "cpu",
                                "--sleep", "0.5", "--progress-interval", "0"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=REPO)
    try:
        read_events_until(proc, lambda e: e["event"] == "step" and e["epoch"] == 2 and e["step"] == 1)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    events = [json.loads(line) for line in rest.splitlines()]
    assert events[-1]["event"] == "end" and events[-1]["status"] == "interrupted" and events[-1]["epoch"] == 1
    assert "--resume" in err and "Traceback" not in err
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["epoch"] == 1 and ckpt["partial_epoch"] is True and ckpt["global_step"] >= 4
    end, events = run_inprocess(fer_dir, out, epochs=3, resume=True)
    assert end["status"] == "completed" and end["epoch"] == 3
    assert end["global_step"] == 3 * (30 // 8)  # the partial epoch's steps are not counted twice
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [2, 3]


@pytest.mark.slow
def test_torchrun_two_process_gloo(fer_dir: Path, tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    out = tmp_path / "ddp"
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "tests.engine_support", "train",
                           RECIPE_NAME, "--data", str(fer_dir), "--out", str(out), "--epochs", "2",
                           "--device", "cpu", "--progress-interval", "0"],
                          capture_output=True, text=True, env=cli_env(), cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    start = [e for e in events if e["event"] == "start"]
    assert len(start) == 1 and start[0]["world_size"] == 2  # rank 0 alone reports
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2]
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 2 * (30 // 8)  # global batch 8 = 2 ranks x 4
    assert not any(k.startswith("module.") for k in ckpt["modules"]["model"])


def test_progress_bar_on_a_tty_and_plain_lines_otherwise() -> None:
    import io

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out, tty, plain = io.StringIO(), Tty(), io.StringIO()
    for err in (tty, plain):
        rep = ProgressReporter(stdout=out, stderr=err)
        rep.emit({"event": "step", "epoch": 1, "epochs": 2, "step": 5, "steps": 10, "loss": float("nan"),
                  "accuracy": 0.5, "images_per_s": 100.0, "eta_s": 65.0})
        rep.emit({"event": "epoch", "epoch": 1, "epochs": 2, "loss": 1.0, "accuracy": 0.5, "val": {"val_accuracy": 0.4},
                  "lr": 0.1, "images_per_s": 100.0, "epoch_time_s": 3.0, "eta_s": 3.0, "best": True})
    assert "\r" in tty.getvalue() and "[############------------] 5/10" in tty.getvalue() and "eta 01:05" in tty.getvalue()
    assert "\r" not in plain.getvalue() and plain.getvalue().count("\n") == 1 and "*best*" in plain.getvalue()
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["loss"] is None  # NaN -> null keeps the line valid JSON


def test_time_budget_stops_before_an_epoch_that_would_not_fit(fer_dir: Path, tmp_path: Path) -> None:
    end = train(TinyRecipe(fer_dir, {}), tmp_path / "run", epochs=5, device="cpu", seed=0, json_lines=False,
                time_budget_s=1e-6)
    assert end["status"] == "budget" and end["epoch"] == 1  # the first epoch always runs
    assert "time budget" in end["message"]
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["epoch"] == 1 and not state["partial_epoch"]
    again = train(TinyRecipe(fer_dir, {}), tmp_path / "run", epochs=2, device="cpu", resume=True, json_lines=False)
    assert again["status"] == "completed" and again["epoch"] == 2  # resumable like any stop
