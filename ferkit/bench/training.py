"""Training throughput (images/s) of each recipe's main network on the current device.

One "step" is what dominates every recipe's epoch: forward the recipe's main network on a batch
of the recipe's size at its input size, the classification loss, backward, SGD step (FERSNet: the
generator's classification + synthesis reconstruction loss; its discriminator step is not
counted). Data is random and already on the device, as the recipes keep their data on the
training device; augmentation is not included. channels_last is used on CPU where the recipe
uses it (TFE-JL, Light CNN).

Each network is measured in fp32 and with bf16 autocast (the engine's ``--precision bf16``) in
the same run, steps alternating between them, so the ratios are not skewed by other load on a
shared machine. Where the recipe uses channels_last, a third variant is plain fp32 in the default
contiguous layout (what a training loop gets without the fast path), so the table shows both
ratios: bf16 / fp32 at the recipe's layout (what bf16 alone buys) and the whole fast path (bf16 +
channels_last) against plain fp32. Threads: the training engine's default (the cores not busy with
other programs, :func:`ferkit.training.threads.choose_threads`; ``FERKIT_TRAIN_THREADS`` pins it);
each row records the count it ran with.
"""
from __future__ import annotations

import contextlib
import copy
import os
import time
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from ferkit.bench.stats import summary
from ferkit.training.recipe import NetSpec

MAX_STEP_TIME_S = 1.0
PROBE_BATCH = 8
STEPS = 3


def training_step(spec: NetSpec, net: torch.nn.Module, device: torch.device,
                  layout: torch.memory_format = torch.contiguous_format,
                  precision: str = "fp32") -> Callable[[int], float]:
    """One SGD step of ``net`` (``spec``'s network) on a random batch, as a function of the batch
    size returning its seconds: the unit every training row times, so the recipe table and the
    busy-core rows measure the same work. FERSNet-like networks (``spec.synthesis``) add the
    synthesis reconstruction to the classification loss."""
    from ferkit.training.precision import autocast

    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    size = spec.input_size or int(getattr(net, "input_size", 48))
    channels = int(getattr(net, "in_channels", None) or 1)

    def step(batch: int) -> float:
        x = torch.randn(batch, channels, size, size, device=device).contiguous(memory_format=layout)
        y = torch.randint(0, net.num_classes, (batch,), device=device)
        cast = autocast(device, torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        t = time.perf_counter()
        with cast:
            if spec.synthesis:
                out = net(x, target=y)
                loss = F.cross_entropy(out.logits.float(), y) + (out.synthesis.float() - x.tanh()).abs().mean()
            else:
                loss = F.cross_entropy(net(x).logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t

    return step


def bench_network(spec: NetSpec, device: torch.device, steps: int = STEPS) -> dict[str, Any]:
    """fp32 and bf16 training img/s of one network, measured side by side."""
    from ferkit.models.registry import create_model

    torch.manual_seed(0)
    model = create_model(spec.architecture, **spec.cfg).to(device).train()
    size = spec.input_size or int(getattr(model, "input_size", 48))
    channels = int(getattr(model, "in_channels", None) or 1)
    fmt = torch.channels_last if spec.channels_last and device.type == "cpu" else torch.contiguous_format
    # variant -> its step: fp32 and bf16 at the recipe's layout, plain fp32 only where the layout differs
    layouts = {"fp32": fmt, "bf16": fmt}
    if fmt == torch.channels_last:
        layouts["fp32_plain"] = torch.contiguous_format
    variants = {name: training_step(spec, copy.deepcopy(model).to(memory_format=layout), device, layout,
                                    "bf16" if name == "bf16" else "fp32")
                for name, layout in layouts.items()}

    def step(batch: int, variant: str = "fp32") -> float:
        return variants[variant](batch)

    # probe a small batch first: a heavy network (VGG-16 / Light CNN at 128 px on a 2-core CPU) is
    # measured at the batch that fits MAX_STEP_TIME_S instead of taking minutes per step
    probe = min(PROBE_BATCH, spec.batch)
    step(probe)
    per_image = step(probe) / probe
    batch = spec.batch
    if per_image * batch > MAX_STEP_TIME_S:
        batch = max(probe, int(MAX_STEP_TIME_S / per_image))
    rates: dict[str, list[float]] = {v: [] for v in variants}
    for v in variants:
        step(batch, v)  # warm-up at the measured batch (allocation, kernel selection)
    for _ in range(steps):
        for v in variants:  # alternate, so background load hits all alike
            rates[v].append(batch / step(batch, v))
    med = {v: summary(r, digits=1) for v, r in rates.items()}
    fp32, bf16 = med["fp32"], med["bf16"]
    row = {"architecture": spec.architecture, "batch": batch, "recipe_batch": spec.batch,
           "input": [channels, size, size], "channels_last": fmt == torch.channels_last, "device": str(device),
           "threads": torch.get_num_threads(), "img_per_s": fp32, "img_per_s_bf16": bf16,
           "bf16_speedup": round(bf16["median"] / fp32["median"], 2) if fp32["median"] else None}
    plain = med.get("fp32_plain", fp32)
    row["img_per_s_fp32_plain"] = plain
    row["fast_path_speedup"] = round(bf16["median"] / plain["median"], 2) if plain["median"] else None
    return row


#: recipe settings other than a recipe's defaults that ship weights: measured beside the recipes
CONFIGURATIONS: dict[str, NetSpec] = {
    # the shipped fersnet's CPU recipe: 48 px, 32 filters, resize-convolutions, batch 32
    "fersnet/ckplus (CPU recipe: 48 px, width 32)": NetSpec(
        "fersnet_light", {"num_classes": 7, "input_size": 48, "width": 32, "upsample": "resize"}, 48, 32,
        synthesis=True),
}


def bench_training(recipes: Optional[list[str]] = None, device: torch.device = torch.device("cpu")) -> list[dict]:
    """One row per recipe (its :attr:`~ferkit.training.recipe.Recipe.network`); recipes sharing a
    network configuration are measured once."""
    from ferkit.recipes.registry import get_recipe, list_recipes
    from ferkit.training.threads import choose_threads

    known = list_recipes()
    # every recipe, then the named configurations of a recipe (FERSNet's CPU recipe), marked registered=False
    names = recipes or known + list(CONFIGURATIONS)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(choose_threads(None).threads)  # the engine's default: the free cores
    done: dict[str, dict[str, Any]] = {}
    rows = []
    for name in names:
        spec = get_recipe(name).network if name in known else CONFIGURATIONS.get(name)
        if spec is None:
            rows.append({"recipe": name, "error": "not a registered recipe" if name not in known
                         else "the recipe declares no network (Recipe.network)"})
            continue
        key = repr(spec)  # dict fields make NetSpec unhashable; its repr identifies it
        if key not in done:
            try:
                done[key] = bench_network(spec, device)
            except Exception as exc:  # noqa: BLE001 - keep the other rows
                done[key] = {"architecture": spec.architecture, "error": f"{type(exc).__name__}: {exc}"}
        rows.append({"recipe": name, "registered": name in known, **done[key]})
    torch.set_num_threads(threads)
    return rows


# ---- training next to a busy core (issue 22) --------------------------------------------------
#: the recipe of the busy-core rows: the CK+ network the issue measured (23 img/s busy, 946 on one thread)
BUSY_CORE_RECIPE = "tfe-jl/resnet12-ckplus"


def train_rate(recipe: str = BUSY_CORE_RECIPE, threads: Any = "auto", seconds: float = 6.0) -> dict[str, Any]:
    """Training img/s of ``recipe``'s network over ``seconds`` with the engine's thread handling.

    ``threads`` as ``ferkit train --threads`` takes it: ``"auto"`` chooses the free cores and keeps
    re-checking them while it runs (:class:`~ferkit.training.threads.ThreadGovernor`, the engine's
    own), a number is fixed. fp32 at the recipe's layout and batch, as the engine's defaults give on
    a CPU without bf16 instructions. Meant to run in a fresh process (:func:`busy_core_rows`).
    """
    from ferkit.models.registry import create_model
    from ferkit.training.threads import ThreadGovernor, choose_threads

    from ferkit.recipes.registry import get_recipe

    spec = get_recipe(recipe).network
    choice = choose_threads(threads)
    torch.set_num_threads(choice.threads)
    governor = ThreadGovernor(choice, torch.set_num_threads)
    torch.manual_seed(0)
    fmt = torch.channels_last if spec.channels_last else torch.contiguous_format
    net = create_model(spec.architecture, **spec.cfg).to(memory_format=fmt).train()
    step = training_step(spec, net, torch.device("cpu"), fmt)
    step(spec.batch)  # warm-up (allocation, kernel selection)
    images, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step(spec.batch)
        images += spec.batch
        governor.step_done(spec.batch)
    elapsed = time.perf_counter() - t0
    return {"recipe": recipe, "architecture": spec.architecture, "batch": spec.batch,
            "threads_setting": str(threads), "threads_start": choice.threads, "threads_end": governor.threads,
            "thread_changes": [list(c) for c in governor.changes], "choice": choice.reason,
            "img_per_s": round(images / elapsed, 1), "seconds": round(elapsed, 2),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default")}


def _rate_in_child(threads: Any, seconds: float, load_cores: int, env: Optional[dict[str, str]] = None,
                   recipe: str = BUSY_CORE_RECIPE, load_nice: int = 0) -> dict[str, Any]:
    """:func:`train_rate` in a fresh interpreter (its own OpenMP runtime and wait policy), next to
    ``load_cores`` busy loops."""
    import sys

    from ferkit.bench.load import json_row_in_child

    code = ("import json, sys; from ferkit.bench.training import train_rate; "
            f"print(json.dumps(train_rate({recipe!r}, {threads!r}, {float(seconds)!r})))")
    child_env = {**os.environ, **(env or {})}
    child_env.pop("FERKIT_TRAIN_THREADS", None)  # the row's setting, not the caller's default
    return json_row_in_child([sys.executable, "-c", code], timeout_s=seconds + 120, load_cores=load_cores,
                             load_nice=load_nice, env=child_env)


def busy_core_rows(seconds: float = 6.0, load_cores: int = 1, repeats: int = 2) -> dict[str, Any]:
    """Issue 22's "training under one busy core": the default settings idle and next to a busy loop.

    Rows (each run a fresh process, so the OpenMP runtime starts with the row's environment):
    default settings idle; default settings with ``load_cores`` busy (the busy loop of
    :mod:`ferkit.bench.load`, pinned to the last allowed core) at our priority, and as a
    low-priority job (nice 19, the issue's desktop); the old default (one thread per CPU of the
    machine, fixed) under the equal-priority load, with OpenMP's default and its passive wait policy.
    The rows take turns ``repeats`` times and each reports the median img/s (``img_per_s_runs``:
    every run), so a change in the machine's other load hits all rows alike.
    ``idle_over_busy``: idle img/s / busy img/s of the default settings, equal-priority load (goal <= 2).
    Where this process may use a single core, the load shares that core: a fair scheduler then
    gives training half of it, so 2 is that case's floor.
    """
    import statistics

    from ferkit.training.threads import allowed_cpus

    every = os.cpu_count() or 1
    configs: list[tuple[str, dict[str, Any]]] = [
        ("idle, default (--threads auto)", {"threads": "auto", "load_cores": 0}),
        ("one busy core, default (--threads auto)", {"threads": "auto", "load_cores": load_cores}),
        ("one busy core (nice 19 job), default (--threads auto)",
         {"threads": "auto", "load_cores": load_cores, "load_nice": 19}),
        (f"one busy core, --threads {every} (one per CPU, the old default)",
         {"threads": every, "load_cores": load_cores}),
        (f"one busy core, --threads {every}, OMP_WAIT_POLICY=PASSIVE",
         {"threads": every, "load_cores": load_cores, "env": {"OMP_WAIT_POLICY": "PASSIVE"}}),
    ]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in configs}
    for _ in range(max(1, int(repeats))):
        for name, cfg in configs:
            runs[name].append(_rate_in_child(seconds=seconds, **cfg))
    rows = []
    for name, _ in configs:
        good = [r for r in runs[name] if "error" not in r]
        if not good:
            rows.append({"name": name, **runs[name][0]})
            continue
        rates = [r["img_per_s"] for r in good]
        rows.append({"name": name, **good[0], "img_per_s": round(statistics.median(rates), 1),
                     "img_per_s_runs": rates, "threads_end": max(r["threads_end"] for r in good)})
    idle, busy = rows[0].get("img_per_s"), rows[1].get("img_per_s")
    low = rows[2].get("img_per_s")
    return {"recipe": BUSY_CORE_RECIPE, "allowed_cpus": allowed_cpus(), "cpu_count": every, "rows": rows,
            "repeats": repeats, "idle_over_busy": round(idle / busy, 2) if idle and busy else None,
            "idle_over_busy_low_priority": round(idle / low, 2) if idle and low else None, "goal": "<= 2"}
