"""Batch-size sweep: throughput versus latency as the batch grows, and the knee of the curve.

One model state (optionally after a recipe's optimizations), benchmarked at each batch size with the same fixed
inputs and timing rules as ``optbench run`` (core/measure/timing.py). Throughput is samples/s for encoders and
classifiers (batch / median latency), decode tokens/s for causal LMs (batch / median per-token decode time). The knee is the smallest batch reaching ``knee_fraction`` of the best
throughput measured: beyond it, latency keeps growing for little more throughput. A batch that runs out of memory
ends the sweep (recorded, not fatal).
"""

from __future__ import annotations

import time
from typing import Callable

from workbench.core.errors import InputError

DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32)


def parse_batches(text: str) -> list[int]:
    try:
        values = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise InputError(f"{text!r}: expected comma-separated integers, e.g. 1,2,4,8", param="batches") from None
    if not values or values[0] < 1 or values[-1] > 4096:
        raise InputError(f"{text!r}: expected batch sizes in [1, 4096]", param="batches")
    return values


def knee(points: list[dict], fraction: float = 0.9) -> dict | None:
    """The smallest batch whose throughput is at least ``fraction`` of the best one."""
    ok = [p for p in points if p.get("throughput")]
    if not ok:
        return None
    best = max(p["throughput"] for p in ok)
    for p in sorted(ok, key=lambda p: p["batch"]):
        if p["throughput"] >= fraction * best:
            return {"batch": p["batch"], "throughput": p["throughput"], "latency_ms": p["latency_ms"],
                    "rule": f"smallest batch with throughput >= {fraction:.0%} of the best ({best:.4g})"}
    return None


def sweep_loaded(loaded, batches, settings, on_point: Callable[[dict], None] | None = None,
                 on_progress: Callable[[float], None] | None = None) -> list[dict]:
    """Benchmark an already-loaded (and optimized) model at each batch size."""
    import dataclasses

    import torch

    from workbench.core.measure import memory
    from workbench.core.measure.timing import bench

    points = []
    for i, b in enumerate(batches):
        s = dataclasses.replace(settings, batch=b)
        memory.cuda_reset(loaded.device)
        t0 = time.perf_counter()
        try:
            r = bench(loaded.model, loaded.tokenizer, loaded.task, s, loaded.device,
                      generate_kwargs=loaded.generate_kwargs)
        except (torch.OutOfMemoryError, MemoryError) as exc:
            point = {"batch": b, "error": f"out of memory ({type(exc).__name__})"}
            points.append(point)
            if on_point:
                on_point(point)
            if loaded.device.startswith("cuda"):
                torch.cuda.empty_cache()
            break
        lat = r["latency_ms"]["p50"]
        point = {
            "batch": b,
            "latency_ms": lat,
            "latency_ms_p90": r["latency_ms"]["p90"],
            "latency_per_item_ms": lat / b,
            # from the median (robust on a noisy machine); the benchmark's mean-based figure is kept beside it
            "throughput": (b * 1000.0 / r["decode_ms_per_token"]["p50"]) if r.get("decode_ms_per_token")
            else b * 1000.0 / lat,
            "throughput_mean": r["throughput"]["value"],
            "throughput_unit": r["throughput"]["unit"],
            "ttft_ms": r["ttft_ms"]["p50"] if r.get("ttft_ms") else None,
            "decode_ms_per_token": r["decode_ms_per_token"]["p50"] if r.get("decode_ms_per_token") else None,
            "iterations": r["latency_ms"]["count"],
            "cold_start_ms": r["cold_start_ms"],
            "seconds": time.perf_counter() - t0,
            **{k: v for k, v in memory.cuda_peaks(loaded.device).items()},
        }
        points.append(point)
        if on_point:
            on_point(point)
        if on_progress:
            on_progress((i + 1) / len(batches))
    return points


def batch_sweep(model_ref: str, batches=DEFAULT_BATCHES, opts=(), task: str | None = None, device: str = "auto",
                seq_len: int = 128, new_tokens: int = 32, warmup: int = 1, min_iters: int = 3,
                min_seconds: float = 1.0, knee_fraction: float = 0.9, log: Callable[[str], None] = lambda t: None,
                on_point: Callable[[dict], None] | None = None) -> dict:
    """Load ``model_ref``, apply ``opts`` ([(name, params)], validated like a recipe), sweep ``batches``."""
    from workbench.core.apply import apply_steps
    from workbench.core.measure.env import environment
    from workbench.core.models import load
    from workbench.core.recipe import BenchSettings, EvalSettings, ModelSpec, OptStep, Recipe

    if not 0 < knee_fraction <= 1:
        raise InputError(f"{knee_fraction}: expected a fraction in (0, 1]", param="knee")
    recipe = Recipe(ModelSpec(model_ref, task=task), [OptStep(n, dict(p)) for n, p in opts],
                    BenchSettings(seq_len=seq_len, new_tokens=new_tokens, warmup=warmup, min_iters=min_iters,
                                  min_seconds=min_seconds), EvalSettings(source="none"), device=device)
    recipe.validate()
    loaded = load(model_ref, task, device)
    recipe = recipe.validate(task=loaded.task, device=loaded.device)
    reports = apply_steps(loaded, recipe.optimizations, log=log, on_applied=lambda rep: log(f"applied {rep['name']}"))
    applied = [{"name": rep["name"], "params": rep["params"]} for rep in reports]
    points = sweep_loaded(loaded, list(batches), recipe.bench, on_point=on_point)
    ok = [p for p in points if "error" not in p]
    return {
        "model": loaded.info(),
        "task": loaded.task,
        "device": loaded.device,
        "environment": environment(loaded.device),
        "optimizations": applied,
        "settings": {"seq_len": seq_len, "new_tokens": new_tokens if loaded.task == "causal-lm" else None,
                     "warmup": warmup, "min_iters": min_iters, "min_seconds": min_seconds},
        "points": points,
        "knee": knee(ok, knee_fraction),
        "best_throughput": max((p["throughput"] for p in ok), default=None),
        "throughput_unit": ok[0]["throughput_unit"] if ok else None,
    }
