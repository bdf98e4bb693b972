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
channels_last) against plain fp32. Threads: every core, as the training engine uses.
"""
from __future__ import annotations

import contextlib
import copy
import os
import time
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ferkit.bench.stats import summary
from ferkit.training.recipe import NetSpec

MAX_STEP_TIME_S = 1.0
PROBE_BATCH = 8
STEPS = 3


def bench_network(spec: NetSpec, device: torch.device, steps: int = STEPS) -> dict[str, Any]:
    """fp32 and bf16 training img/s of one network, measured side by side."""
    from ferkit.models.registry import create_model
    from ferkit.training.precision import autocast

    torch.manual_seed(0)
    model = create_model(spec.architecture, **spec.cfg).to(device).train()
    size = spec.input_size or int(getattr(model, "input_size", 48))
    channels = int(getattr(model, "in_channels", None) or 1)
    fmt = torch.channels_last if spec.channels_last and device.type == "cpu" else torch.contiguous_format
    # variant -> (model, optimiser, memory format, precision); the plain one only where the layout differs
    layouts = {"fp32": fmt, "bf16": fmt}
    if fmt == torch.channels_last:
        layouts["fp32_plain"] = torch.contiguous_format
    variants = {}
    for name, layout in layouts.items():
        net = copy.deepcopy(model).to(memory_format=layout)
        variants[name] = (net, torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9), layout,
                          "bf16" if name == "bf16" else "fp32")

    def step(batch: int, variant: str = "fp32") -> float:
        net, opt, layout, precision = variants[variant]
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


def bench_training(recipes: Optional[list[str]] = None, device: torch.device = torch.device("cpu")) -> list[dict]:
    """One row per recipe (its :attr:`~ferkit.training.recipe.Recipe.network`); recipes sharing a
    network configuration are measured once."""
    from ferkit.recipes.registry import get_recipe, list_recipes

    known = list_recipes()
    names = recipes or known
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)  # as the training engine does
    done: dict[str, dict[str, Any]] = {}
    rows = []
    for name in names:
        spec = get_recipe(name).network if name in known else None
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
