"""The training engine: runs any :class:`~ferkit.training.recipe.Recipe` and owns what all share.

A recipe says what the paper decides (model, data, losses, optimisers, schedule); the engine does
the rest the same way for every paper: device choice, AMP, torchrun/DDP, deterministic seeding,
a checkpoint after every epoch (atomic), ``best.pt``, resume, Ctrl-C / SIGTERM, progress events
and training curves.

Epoch numbering
    Recipe hooks (``train_epoch``, ``evaluate``, ``end_epoch``, ``ctx.batches``) receive the
    **0-based** epoch index. Events, ``curves.csv`` and the checkpoint's ``epoch`` field count
    **completed** epochs (1-based): after the first epoch, ``epoch`` is 1. ``ctx.epochs`` is the
    planned total, set before ``recipe.setup`` (for schedules that span the whole run).

Determinism
    Everything is seeded from ``seed`` (torch, CUDA, numpy, python) before ``recipe.setup`` so
    initialisation is reproducible, and re-seeded at the start of every epoch from
    ``(seed, epoch, rank)``; ``ctx.batches`` draws its permutation from ``(seed, epoch)``. An epoch
    therefore depends only on the weights/optimiser state at its start, which is exactly what the
    checkpoint holds: ``resume=True`` after a completed epoch gives the same weights as an
    uninterrupted run (bit-identical on CPU; on CUDA up to non-deterministic kernels unless
    ``deterministic=True``).

Interrupts
    The first SIGINT (Ctrl-C) or SIGTERM lets the current optimisation step finish, saves
    ``checkpoint.pt`` and returns with ``status="interrupted"`` (the CLI exits 130). A checkpoint
    saved in the middle of an epoch holds the mid-epoch weights, is marked
    ``partial_epoch=True`` and its ``epoch`` is the number of *completed* epochs, so resume
    restarts the interrupted epoch from its first batch: no work is thrown away, but that run is
    no longer bit-identical to an uninterrupted one. A second signal stops at once
    (KeyboardInterrupt); the atomic write keeps the previous checkpoint intact.

Progress events (stdout, JSON lines, one object per line, flushed; rank 0 only)
    While the recipe runs, ``sys.stdout`` is redirected to stderr so stray prints cannot break the
    stream. Non-finite numbers are ``null``. Every event has ``"event"`` and ``"time"`` (unix s).

    - ``start``: recipe, out_dir, device, world_size, amp (``"bf16"``/``"fp16"``/``null``),
      seed, epochs (planned total), start_epoch (completed epochs before this run), steps
      (steps per epoch when known, else null), resumed (bool).
    - ``step`` (at most every ``progress_interval`` s, and on the first step of an epoch):
      epoch (1-based, the one running), epochs, step (1-based within the epoch), steps (or null),
      global_step, loss and accuracy (running means over the epoch so far), lr, images_per_s,
      eta_s (whole run, evaluation included), extra (running means of the recipe's extra losses),
      threads (torch threads in use on a CPU run, null on GPUs/DDP; ``start`` has it too, with
      threads_auto: whether it follows the free cores).
      ``steps`` is the number of steps the last completed epoch really took; before one has
      completed it is the length of ``ctx.batches`` capped by the recipe's
      ``max_steps_per_epoch`` option (``--max-steps-per-epoch``), so it never overstates a
      shortened epoch; null when unknown or when the running epoch has outgrown it.
    - ``epoch`` (after the checkpoint is on disk): epoch, epochs, global_step, loss, accuracy,
      extra, val (the recipe's ``evaluate`` dict, e.g. ``{"val_accuracy": ..}``), lr,
      images_per_s, threads, epoch_time_s, eta_s (same estimate as the step events': mean step time x
      remaining steps + mean evaluation time x remaining epochs), checkpoint (path), best (bool: this epoch wrote
      ``best.pt``), best_path, best_val_accuracy, curves (csv path).
    - ``end``: status (``"completed"`` | ``"interrupted"`` | ``"budget"``: ``--time-budget`` ran
      out before the planned epochs), message, epoch (completed epochs),
      epochs, checkpoint, best_path, best_val_accuracy, wall_time_s, metrics (last val dict).
    - ``error``: message, type (exception class name); the exception is then re-raised.

Files in ``out_dir`` (rank 0 writes): ``checkpoint.pt`` (every epoch, see
:mod:`ferkit.training.checkpoint`), ``best.pt`` (when the recipe's ``val_accuracy`` improves),
``curves.csv`` + ``curves.png``.

Under torchrun, ``batch_size`` given to ``ctx.batches`` is the *global* batch: each of the N
ranks gets ``batch_size // N`` items per step, so the paper's hyper-parameters hold for any N.
``evaluate`` runs on every rank (use the unwrapped model there); only rank 0 writes and reports.
"""
from __future__ import annotations

import contextlib
import platform
import signal
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from ferkit.errors import NotFoundError, UsageError
from ferkit.models.weights import Weights
from ferkit.training import distributed
from ferkit.training.checkpoint import (capture_rng, copy_checkpoint, load_checkpoint, load_state_dicts, restore_rng,
                                        save_checkpoint, state_dicts)
from ferkit.training.curves import write_curves
from ferkit.training.precision import autocast as precision_autocast
from ferkit.training.precision import precision_name, resolve_precision
from ferkit.training.progress import ProgressReporter, format_duration
from ferkit.training.recipe import Recipe, StepResult
from ferkit.training.threads import ThreadChoice, ThreadGovernor, choose_threads
from ferkit.utils.denormals import SUBNORMAL_WARNING, flush_denormals

__all__ = ["train", "EngineContext", "seed_everything", "derive_seed"]


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (so (seed, epoch) streams never overlap)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1, np.uint64)[0]) >> 1


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)  # also seeds every CUDA device


class EngineContext:
    """The :class:`~ferkit.training.recipe.TrainContext` the engine hands a recipe."""

    def __init__(self, info: distributed.DistInfo, amp_dtype: Optional[torch.dtype], seed: int, out_dir: Path,
                 reporter: ProgressReporter):
        self.info = info
        self.device = info.device
        self.rank = info.rank
        self.world_size = info.world_size
        self.seed = seed
        self.out_dir = Path(out_dir)
        self._reporter = reporter
        #: autocast dtype of this run (None: fp32), from :func:`~ferkit.training.precision.resolve_precision`
        self.amp_dtype: Optional[torch.dtype] = amp_dtype
        self.amp = self.amp_dtype is not None
        self._scalers: dict[int, torch.amp.GradScaler] = {}
        #: planned total number of epochs of this run (schedules that span the run need it)
        self.epochs: int = 1
        #: number of batches of the last ``batches()`` call (steps per epoch, for progress/ETA)
        self.steps_hint: Optional[int] = None
        #: the recipe's ``max_steps_per_epoch`` option: ``batches()`` hints at most this many steps,
        #: because a recipe that stops early would otherwise report "step 8/27" for a 10-step epoch
        self.max_steps_per_epoch: Optional[int] = None
        self._warned_small = False

    # ---- TrainContext ------------------------------------------------------------------------
    def autocast(self) -> ContextManager[Any]:
        return precision_autocast(self.device, self.amp_dtype)

    def scaler(self, optimizer: torch.optim.Optimizer) -> Optional[torch.amp.GradScaler]:
        """fp16 needs loss scaling (one scaler per optimiser: GAN alternation steps them apart)."""
        if self.amp_dtype != torch.float16:
            return None
        key = id(optimizer)
        if key not in self._scalers:
            self._scalers[key] = torch.amp.GradScaler("cuda")
        return self._scalers[key]

    def step(self, loss: torch.Tensor, optimizer: Union[torch.optim.Optimizer, Sequence[torch.optim.Optimizer]],
             parameters: Optional[list[nn.Parameter]] = None, clip_grad: Optional[float] = None) -> None:
        """One backward pass, then a step of every optimiser given (several when parts of one model
        train with different optimisers, e.g. FERSNet's recognition stream on SGD beside G's Adam;
        under fp16 they share the first one's loss scaler, as torch's GradScaler allows)."""
        optimizers = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        scaler = self.scaler(optimizers[0])
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
        if clip_grad:
            if scaler is not None:
                for opt in optimizers:
                    scaler.unscale_(opt)
            params = parameters if parameters is not None else [
                p for opt in optimizers for group in opt.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        for opt in optimizers:
            if scaler is not None:
                scaler.step(opt)
            else:
                opt.step()
        if scaler is not None:
            scaler.update()

    def wrap(self, module: nn.Module, **ddp_kwargs: Any) -> nn.Module:
        """DDP under torchrun (``ddp_kwargs`` go to DistributedDataParallel, e.g.
        ``find_unused_parameters=True`` for a branch some steps skip); the module itself otherwise."""
        if not self.info.distributed:
            return module
        if isinstance(module, torch.nn.parallel.DistributedDataParallel):
            return module
        if not any(p.requires_grad for p in module.parameters()):
            return module  # nothing to synchronise (frozen branch)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids, **ddp_kwargs)

    def batches(self, n_items: int, batch_size: int, epoch: int, shuffle: bool = True,
                drop_last: bool = True) -> Iterator[torch.Tensor]:
        if n_items <= 0:
            raise ValueError("ctx.batches: the dataset is empty")
        ws = self.world_size
        per_rank = max(1, int(batch_size) // ws)
        if drop_last and n_items < per_rank * ws:
            if not self._warned_small:
                self.log(f"note: {n_items} items is less than one batch of {batch_size}; using one smaller batch")
                self._warned_small = True
            drop_last = False
        if shuffle:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch, 0xBA7C))
            order = torch.randperm(n_items, generator=gen)
        else:
            order = torch.arange(n_items)
        if drop_last:
            order = order[: (n_items // (per_rank * ws)) * per_rank * ws]
        elif ws > 1:
            pad = (-n_items) % ws  # every rank gets the same number of items, hence of steps
            order = torch.cat([order, order[:pad]])
        if ws > 1:
            order = order[self.rank::ws]
        chunks = list(order.to(self.device).split(per_rank))
        self.steps_hint = len(chunks) if not self.max_steps_per_epoch else min(len(chunks), self.max_steps_per_epoch)
        return iter(chunks)

    def log(self, message: str) -> None:
        self._reporter.log(message)

    # ---- engine side ------------------------------------------------------------------------
    def scaler_states(self, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, Any]:
        return {name: self._scalers[id(opt)].state_dict() for name, opt in optimizers.items()
                if id(opt) in self._scalers}

    def load_scaler_states(self, optimizers: dict[str, torch.optim.Optimizer], states: dict[str, Any]) -> None:
        for name, opt in optimizers.items():
            scaler = self.scaler(opt)
            if scaler is not None and name in states:
                scaler.load_state_dict(states[name])


class _StopFlag:
    """SIGINT/SIGTERM -> finish the current step, then stop; a second signal stops at once."""

    def __init__(self, log: Callable[[str], None]):
        self.requested: Optional[str] = None
        self._log = log
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            raise KeyboardInterrupt(name)
        self.requested = name
        self._log(f"{name}: finishing this step and saving a checkpoint (send again to stop at once)")

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _hardware(info: distributed.DistInfo) -> str:
    if info.device.type == "cuda":
        name = torch.cuda.get_device_name(info.device)
        return f"{info.world_size}x {name}" if info.world_size > 1 else name
    cpu = platform.processor() or platform.machine()
    procs = f"{info.world_size} processes x " if info.world_size > 1 else ""
    return f"CPU {cpu}, {procs}{torch.get_num_threads()} threads"


def _plain_meta(meta: dict[str, Any]) -> dict[str, Any]:
    meta = dict(meta)
    if is_dataclass(meta.get("preprocessing")):
        meta["preprocessing"] = asdict(meta["preprocessing"])
    Weights.from_dict(meta)  # fails early (at setup, not at export) on a malformed weights_meta
    return meta


def _first_lr(optimizers: dict[str, torch.optim.Optimizer]) -> Optional[float]:
    opt = optimizers.get("model") or next(iter(optimizers.values()), None)
    return float(opt.param_groups[0]["lr"]) if opt is not None and opt.param_groups else None


def _num(x: Any) -> float:
    return float(x.detach().float().item()) if isinstance(x, torch.Tensor) else float(x)


class _EpochStats:
    """Running sums of one epoch. Loss may be a tensor: it is only synced when reported."""

    def __init__(self) -> None:
        self.steps = 0
        self.loss_sum: Union[float, torch.Tensor] = 0.0
        self.correct: Union[int, torch.Tensor] = 0
        self.n = 0
        self.extra: dict[str, Union[float, torch.Tensor]] = {}
        self.images = 0

    def add(self, r: StepResult, fallback_n: int) -> None:
        self.steps += 1
        loss = r.loss.detach() if isinstance(r.loss, torch.Tensor) else r.loss
        self.loss_sum = self.loss_sum + loss
        self.correct = self.correct + (r.correct.detach() if isinstance(r.correct, torch.Tensor) else r.correct)
        self.n += int(r.n)
        self.images += int(r.n) if r.n else fallback_n
        for k, v in r.extra.items():
            v = v.detach() if isinstance(v, torch.Tensor) else v
            self.extra[k] = self.extra.get(k, 0.0) + v

    def means(self) -> tuple[Optional[float], Optional[float], dict[str, float]]:
        if not self.steps:
            return None, None, {}
        acc = _num(self.correct) / self.n if self.n else None
        return _num(self.loss_sum) / self.steps, acc, {k: _num(v) / self.steps for k, v in self.extra.items()}


def train(recipe: Recipe, out_dir: Union[str, Path], epochs: Optional[int] = None, device: str = "auto",
          resume: bool = False, seed: Optional[int] = None, amp: bool = True, *, precision: str = "auto",
          threads: Union[int, str, None] = None,
          progress_interval: float = 0.5, deterministic: bool = False,
          on_event: Optional[Callable[[dict[str, Any]], None]] = None,
          json_lines: bool = True, validate: bool = True, time_budget_s: Optional[float] = None) -> dict[str, Any]:
    """Train ``recipe`` into ``out_dir``; returns the ``end`` event (status, checkpoint, metrics...).

    ``seed`` defaults to 0, or to the checkpoint's seed on resume. ``epochs`` defaults to the
    recipe's paper value, or to the checkpoint's planned total on resume (a larger value extends a
    finished run where the recipe's schedule allows it; the classifier recipes refuse, since their
    schedule spans the planned epochs: start a new run with ``--init-checkpoint`` instead). ``precision`` is ``auto|fp32|bf16|fp16`` (see
    :mod:`ferkit.training.precision`); ``amp=False`` is the old spelling of ``fp32``. ``threads``
    sets torch's intra-op threads on CPU: a number, or ``"auto"`` (the default, or
    ``$FERKIT_TRAIN_THREADS``): the cores free now, re-checked every few seconds while it trains
    and at every epoch (:mod:`ferkit.training.threads`; with one of two cores busy elsewhere, two
    threads trained 40x slower than one). Float reductions depend on the count, so bit-identical
    reruns and resumes need a fixed number (``deterministic=True`` also keeps the first auto
    count). ``time_budget_s`` stops the run before an epoch
    that would end past the budget (status ``"budget"``, the last epoch's checkpoint kept; the
    schedule is the caller's to fit, e.g. :func:`ferkit.training.budget.fit_epochs`).
    ``json_lines=False`` keeps stdout clean (in-process callers that use
    ``on_event``). ``validate=False`` skips ``recipe.validate_data`` (the CLI has run it already).
    """
    out_dir = Path(out_dir)
    real_stdout = sys.stdout
    info: Optional[distributed.DistInfo] = None
    reporter = ProgressReporter(enabled=distributed.env_world()[0] == 0, stdout=real_stdout,
                                on_event=on_event, json_lines=json_lines)
    try:
        if validate:
            type(recipe).validate_data(recipe.data_dir)
        info = distributed.setup(device)
        reporter.enabled = info.is_main
        amp_dtype = resolve_precision(precision if amp else "fp32", info.device)
        previous_threads = torch.get_num_threads()
        governor: Optional[ThreadGovernor] = None
        if info.device.type == "cpu" and not info.distributed:
            choice = choose_threads(threads)
            if deterministic and choice.auto:  # one count for the whole run: reductions stay reproducible
                choice = ThreadChoice(choice.threads, False, choice.reason + ", fixed by --deterministic")
            torch.set_num_threads(choice.threads)
            governor = ThreadGovernor(choice, torch.set_num_threads, reporter.log)
            reporter.log(f"threads: {choice.reason}" + ("; re-checked every few seconds while it trains"
                                                        if choice.auto else ""))
        try:
            with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=SUBNORMAL_WARNING, category=UserWarning)
                return _run(recipe, out_dir, epochs, resume, seed, amp_dtype, info, reporter,
                            progress_interval, deterministic, time_budget_s, governor)
        finally:
            torch.set_num_threads(previous_threads)
    except BaseException as exc:
        if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            reporter.emit({"event": "error", "time": time.time(), "message": str(exc), "type": type(exc).__name__})
        raise
    finally:
        if info is not None:
            distributed.teardown(info)


def _run(recipe: Recipe, out_dir: Path, epochs: Optional[int], resume: bool, seed: Optional[int],
         amp_dtype: Optional[torch.dtype], info: distributed.DistInfo, reporter: ProgressReporter,
         progress_interval: float, deterministic: bool, time_budget_s: Optional[float] = None,
         governor: Optional[ThreadGovernor] = None) -> dict[str, Any]:
    run = _Run(recipe, out_dir, info, reporter, progress_interval, time_budget_s=time_budget_s, governor=governor)
    run.restore(epochs, resume, seed, amp_dtype, deterministic)
    with _StopFlag(run.ctx.log) as stop:
        for epoch in range(run.start_epoch, run.total_epochs):
            if distributed.any_rank(stop.requested is not None, info):  # all ranks agree, or DDP hangs
                run.stop_name, run.status = stop.requested or "SIGTERM", "interrupted"
                break
            if distributed.any_rank(run.next_epoch_over_budget(), info):
                run.status = "budget"
                break
            if not run.train_epoch(epoch, stop):
                break
            run.finish_epoch(epoch)
    return run.end()


@dataclass
class _Run:
    """One call of :func:`train`: restore, then per epoch train + finish, then the end event.

    Split this way so each step reads top to bottom: ``restore`` decides where the run starts,
    ``train_epoch`` is the inner loop (progress, interrupts), ``finish_epoch`` is everything that
    happens between epochs (means over ranks, evaluation, checkpoint, curves, event).
    """

    recipe: Recipe
    out_dir: Path
    info: distributed.DistInfo
    reporter: ProgressReporter
    progress_interval: float
    #: wall seconds this call may train; the run stops before an epoch that would not fit
    time_budget_s: Optional[float] = None
    status: str = "completed"
    stop_name: Optional[str] = None
    start_epoch: int = 0
    global_step: int = 0
    epoch_start_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_acc: Optional[float] = None
    wall_before: float = 0.0
    last_val: dict[str, Any] = field(default_factory=dict)
    steps_per_epoch: Optional[int] = None
    #: steps the last completed epoch took (the truth, once known; hints are only estimates)
    measured_steps: Optional[int] = None
    step_time_total: float = 0.0
    steps_this_run: int = 0
    eval_time_total: float = 0.0
    evals_this_run: int = 0
    #: CPU runs: the torch thread count and, for ``threads="auto"``, its re-checks (None on GPUs / DDP)
    governor: Optional[ThreadGovernor] = None

    @property
    def ckpt_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.pt"

    def wall(self) -> float:
        return self.wall_before + (time.monotonic() - self.t_run)

    def threads(self) -> Optional[int]:
        """torch threads in use on a CPU run (None on a GPU or under DDP, where the engine does not choose)."""
        return self.governor.threads if self.governor is not None else None

    # ---- restore ---------------------------------------------------------------------------
    def restore(self, epochs: Optional[int], resume: bool, seed: Optional[int], amp_dtype: Optional[torch.dtype],
                deterministic: bool) -> None:
        recipe, info, ckpt_path = self.recipe, self.info, self.ckpt_path
        state: Optional[dict[str, Any]] = None
        if resume:
            if not ckpt_path.exists():
                raise NotFoundError(f"--resume: there is no checkpoint at {ckpt_path}; start without --resume")
            state = load_checkpoint(ckpt_path)
            if state.get("recipe") != recipe.name:
                raise UsageError(f"{ckpt_path} was written by recipe {state.get('recipe')!r}, not {recipe.name!r}")
        elif ckpt_path.exists():
            raise UsageError(f"{ckpt_path} already exists: pass --resume to continue it, or choose another --out")
        self.seed = int(state.get("seed", 0)) if (seed is None and state) else int(seed or 0)
        # Denormal flushing is process-wide state (load_weights turns it on for inference speed); fix it
        # here so a run's numbers never depend on what the process did before (resume in a new process
        # must equal the uninterrupted run), and so CPU training avoids the slow denormal path.
        flush_denormals()
        self.total_epochs = int(epochs if epochs is not None else (state["epochs"] if state else recipe.default_epochs))
        if self.total_epochs < 1:
            raise UsageError(f"epochs must be at least 1, got {self.total_epochs}")
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif info.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)

        ctx = self.ctx = EngineContext(info, amp_dtype, self.seed, self.out_dir, self.reporter)
        ctx.epochs = self.total_epochs
        cap = recipe.options.get("max_steps_per_epoch")
        ctx.max_steps_per_epoch = int(cap) if isinstance(cap, (int, float)) and cap >= 1 else None
        seed_everything(self.seed)
        recipe.setup(ctx)
        self.modules, self.optimizers, self.schedulers = recipe.modules(), recipe.optimizers(), recipe.schedulers()
        if "model" not in self.modules:
            raise ValueError(f"recipe {recipe.name!r}: modules() must contain 'model' (it has {sorted(self.modules)})")
        self.base_meta = _plain_meta(recipe.weights_meta())
        self.hardware = _hardware(info)
        if state is not None:
            self._load_state(state)
        self.epoch_start_step = self.global_step
        self.t_run = time.monotonic()
        self.reporter.emit({"event": "start", "time": time.time(), "recipe": recipe.name, "out_dir": str(self.out_dir),
                            "device": str(info.device), "world_size": info.world_size,
                            "amp": None if ctx.amp_dtype is None else precision_name(ctx.amp_dtype),
                            "precision": precision_name(ctx.amp_dtype), "threads": torch.get_num_threads(),
                            "threads_auto": bool(self.governor and self.governor.choice.auto),
                            "seed": self.seed, "epochs": self.total_epochs, "start_epoch": self.start_epoch,
                            "steps": None, "resumed": state is not None})

    def _load_state(self, state: dict[str, Any]) -> None:
        recipe, ctx, ckpt_path = self.recipe, self.ctx, self.ckpt_path
        diff = {k: (state.get("options", {}).get(k), v) for k, v in recipe.options.items()
                if state.get("options", {}).get(k) != v}
        if diff:
            ctx.log(f"note: options differ from the checkpoint's (checkpoint, now): {diff}")
        # the recipe's own consistency checks first: they say what differs (e.g. another optimiser)
        # where loading the state dicts would fail with torch's less helpful message
        recipe.load_extra_state(state.get("extra_state", {}))
        load_state_dicts(self.modules, state["modules"], "module", ckpt_path)
        load_state_dicts(self.optimizers, state["optimizers"], "optimizer", ckpt_path)
        load_state_dicts(self.schedulers, state.get("schedulers", {}), "scheduler", ckpt_path)
        ctx.load_scaler_states(self.optimizers, state.get("scalers", {}))
        restore_rng(state.get("rng", {}))
        self.start_epoch = int(state["epoch"])
        # a mid-epoch checkpoint restarts its epoch: count steps from that epoch's start
        self.global_step = int(state.get("epoch_start_step", state["global_step"]))
        self.history, self.best_acc = list(state.get("history", [])), state.get("best_val_accuracy")
        self.wall_before = float(state.get("wall_time_s", 0.0))
        self.last_val = dict(state.get("last_val", {}))
        if state.get("partial_epoch"):
            ctx.log(f"note: {ckpt_path} was saved in the middle of epoch {self.start_epoch + 1}; "
                    "that epoch restarts from its first batch")

    def checkpoint_state(self, epoch_done: int, partial: bool, val: dict[str, Any]) -> dict[str, Any]:
        recipe, ctx = self.recipe, self.ctx
        meta = dict(self.base_meta)
        meta.setdefault("recipe", recipe.name)
        meta["epochs"] = epoch_done
        meta["metrics"] = {**dict(self.base_meta.get("metrics") or {}),
                           **{k: v for k, v in val.items() if isinstance(v, (int, float))}}
        if not meta.get("hardware"):
            meta["hardware"] = self.hardware
        meta["wall_time_s"] = round(self.wall(), 1)
        meta["precision"] = precision_name(ctx.amp_dtype)
        given = {k: v for k, v in recipe.options.items() if isinstance(v, (str, int, float, bool))}
        meta["training_options"] = {**given, **dict(self.base_meta.get("training_options") or {})}
        return {
            "recipe": recipe.name, "options": dict(recipe.options), "seed": self.seed,
            "epoch": epoch_done, "epochs": self.total_epochs, "global_step": self.global_step,
            "partial_epoch": partial, "epoch_start_step": self.epoch_start_step if partial else self.global_step,
            "modules": state_dicts(self.modules), "optimizers": state_dicts(self.optimizers),
            "schedulers": state_dicts(self.schedulers), "scalers": ctx.scaler_states(self.optimizers),
            "rng": capture_rng(), "extra_state": recipe.extra_state(),
            "history": self.history, "last_val": val, "best_val_accuracy": self.best_acc,
            "wall_time_s": self.wall(), "weights_meta": meta,
        }

    # ---- one epoch -------------------------------------------------------------------------
    def train_epoch(self, epoch: int, stop: _StopFlag) -> bool:
        """Run the recipe's epoch; False when an interrupt stopped it (a partial checkpoint is saved)."""
        info, ctx = self.info, self.ctx
        self.epoch_start_step = self.global_step
        if self.governor is not None and epoch > self.start_epoch:
            self.governor.epoch_started()  # the first epoch runs on the count chosen just before it
        # each epoch depends only on the state at its start -> exact resume at epoch boundaries
        seed_everything(derive_seed(self.seed, epoch, info.rank))
        stats = self.stats = _EpochStats()
        t_epoch = time.monotonic()
        last_report = -1e9
        ctx.steps_hint = None
        gen = self.recipe.train_epoch(ctx, epoch)
        interrupted_mid = False
        try:
            for result in gen:
                self.global_step += 1
                self.steps_per_epoch = self.measured_steps or ctx.steps_hint or self.steps_per_epoch
                stats.add(result, fallback_n=0)
                if self.governor is not None:
                    self.governor.step_done(int(result.n or 0))
                stopping = distributed.any_rank(stop.requested is not None, info)
                now = time.monotonic()
                if info.is_main and (now - last_report >= self.progress_interval or stats.steps == 1):
                    last_report = now
                    self._report_step(epoch, now - t_epoch)
                if stopping:
                    stop.requested = stop.requested or "SIGINT"
                    interrupted_mid = True
                    break
        finally:
            gen.close()
        self.epoch_time = time.monotonic() - t_epoch
        if interrupted_mid:
            self.stop_name, self.status = stop.requested, "interrupted"
            if info.is_main:
                save_checkpoint(self.checkpoint_state(epoch, True, self.last_val), self.ckpt_path)
            return False
        self.step_time_total += self.epoch_time
        self.steps_this_run += stats.steps
        self.measured_steps = stats.steps or self.measured_steps
        self.steps_per_epoch = self.measured_steps or self.steps_per_epoch
        return True

    def eta(self, epoch: int, steps_done: int, elapsed: float) -> Optional[float]:
        """Seconds left in the run, ``steps_done`` steps (``elapsed`` s) into 0-based ``epoch``
        (after epoch ``e`` has finished: ``eta(e + 1, 0, 0.0)``).

        One estimate for the step and the epoch events alike (they used to disagree by the
        evaluation time): mean step time of this call x the steps left, plus the mean evaluation
        time x the evaluations left (this epoch's too while it trains).
        """
        if not self.steps_per_epoch:
            return None
        steps = self.steps_this_run + steps_done
        rate = (self.step_time_total + elapsed) / steps if steps else 0.0
        left_steps = max(0, self.steps_per_epoch - steps_done) + (self.total_epochs - epoch - 1) * self.steps_per_epoch
        mean_eval = self.eval_time_total / self.evals_this_run if self.evals_this_run else 0.0
        left_evals = max(0, self.total_epochs - epoch)
        return left_steps * rate + left_evals * mean_eval

    def _report_step(self, epoch: int, elapsed: float) -> None:
        stats = self.stats
        loss, acc, extra = stats.means()
        ips = stats.images * self.info.world_size / elapsed if elapsed > 0 else None
        steps = self.steps_per_epoch if self.steps_per_epoch and self.steps_per_epoch >= stats.steps else None
        remaining = self.eta(epoch, stats.steps, elapsed) if steps else None
        self.reporter.emit({"event": "step", "time": time.time(), "epoch": epoch + 1,
                            "epochs": self.total_epochs, "step": stats.steps, "steps": steps,
                            "global_step": self.global_step, "loss": loss, "accuracy": acc,
                            "lr": _first_lr(self.optimizers), "images_per_s": ips, "eta_s": remaining,
                            "extra": extra, "threads": self.threads()})

    def finish_epoch(self, epoch: int) -> None:
        """Train means over ranks, evaluation, checkpoint (+ best), curves, the ``epoch`` event."""
        info, stats, recipe, ctx = self.info, self.stats, self.recipe, self.ctx
        epoch_time = self.epoch_time
        # one collective per epoch: the train means over all ranks
        loss_sum = _num(stats.loss_sum) if stats.steps else 0.0
        extra_keys = sorted(stats.extra)
        sums = distributed.all_reduce_sum(
            [loss_sum, stats.steps, _num(stats.correct), stats.n, stats.images]
            + [_num(stats.extra[k]) for k in extra_keys], info)
        n_steps = sums[1] or 1.0
        train_loss = sums[0] / n_steps if sums[1] else None
        train_acc = sums[2] / sums[3] if sums[3] else None
        extra_means = {k: sums[5 + i] / n_steps for i, k in enumerate(extra_keys)}
        images_per_s = sums[4] / epoch_time if epoch_time > 0 else None
        lr = _first_lr(self.optimizers)

        t_eval = time.monotonic()
        val = dict(recipe.evaluate(ctx, epoch) or {})
        recipe.end_epoch(ctx, epoch)
        eval_time = time.monotonic() - t_eval
        self.eval_time_total += eval_time
        self.evals_this_run += 1
        self.last_val = val

        improved = False
        acc_now = val.get("val_accuracy")
        if isinstance(acc_now, (int, float)) and (self.best_acc is None or acc_now > self.best_acc):
            self.best_acc, improved = float(acc_now), True
        row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_acc}
        row.update({f"train_{k}": v for k, v in extra_means.items()})
        row.update({k: v for k, v in val.items() if isinstance(v, (int, float))})
        row.update({"lr": lr, "images_per_s": images_per_s, "epoch_time_s": epoch_time, "eval_time_s": eval_time})
        self.history.append(row)

        curves_path = None
        if info.is_main:
            save_checkpoint(self.checkpoint_state(epoch + 1, False, val), self.ckpt_path)
            if improved:
                copy_checkpoint(self.ckpt_path, self.best_path)
            try:
                curves_path, _ = write_curves(self.history, self.out_dir, title=recipe.name)
            except Exception as exc:  # noqa: BLE001 - a plotting failure must not lose a training run
                ctx.log(f"warning: could not write training curves: {exc}")
        self.reporter.emit({"event": "epoch", "time": time.time(), "epoch": epoch + 1, "epochs": self.total_epochs,
                            "global_step": self.global_step, "loss": train_loss, "accuracy": train_acc,
                            "extra": extra_means, "val": val, "lr": lr, "images_per_s": images_per_s,
                            "epoch_time_s": epoch_time, "eta_s": self.eta(epoch + 1, 0, 0.0),
                            "threads": self.threads(),
                            "checkpoint": str(self.ckpt_path), "best": improved,
                            "best_path": str(self.best_path) if self.best_acc is not None else None,
                            "best_val_accuracy": self.best_acc,
                            "curves": str(curves_path) if curves_path else None})
        distributed.barrier(info)

    def next_epoch_over_budget(self) -> bool:
        """True when another epoch (at this run's mean epoch time, evaluation included) would end
        past ``time_budget_s``; never before the first epoch of the call."""
        epochs_done = len(self.history) - self.start_epoch
        if self.time_budget_s is None or epochs_done <= 0:
            return False
        elapsed = time.monotonic() - self.t_run
        return elapsed + elapsed / epochs_done > self.time_budget_s

    # ---- end -------------------------------------------------------------------------------
    def end(self) -> dict[str, Any]:
        done, total = len(self.history), self.total_epochs
        if self.status == "budget":
            message = (f"stopped by the time budget ({self.time_budget_s:.0f} s) after {done}/{total} epochs; "
                       f"checkpoint {self.ckpt_path}")
        elif self.status == "interrupted":
            message = (f"stopped by {self.stop_name} after {done}/{total} completed epochs; checkpoint saved to "
                       f"{self.ckpt_path}; run the same command with --resume to continue")
        else:
            message = (f"finished {done}/{total} epochs in {format_duration(self.wall())}; checkpoint "
                       f"{self.ckpt_path}" + (f", best val_accuracy {self.best_acc:.4f} in {self.best_path}"
                                              if self.best_acc is not None else ""))
        end = {"event": "end", "time": time.time(), "status": self.status, "message": message, "epoch": done,
               "epochs": total, "checkpoint": str(self.ckpt_path),
               "best_path": str(self.best_path) if self.best_acc is not None else None,
               "best_val_accuracy": self.best_acc, "wall_time_s": self.wall(), "metrics": self.last_val,
               "global_step": self.global_step}
        self.reporter.emit(end)
        return end
