"""The engine: load → baseline (bench + eval, accuracy cached) → apply optimizations → bench + eval → export.

``run(recipe, emit)`` is what the job process executes. ``emit(type, **payload)`` streams events; the function
returns the JSON report (also emitted as a ``result`` event).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Callable

from workbench.core import cache
from workbench.core.apply import apply_steps
from workbench.core.data import load_eval
from workbench.core.evaluate import HIGHER_IS_BETTER, evaluate
from workbench.core.measure import memory
from workbench.core.measure.env import environment
from workbench.core.measure.monitor import Monitor
from workbench.core.measure.timing import bench
from workbench.core.parallel import group
from workbench.core.recipe import Recipe

Emit = Callable[..., None]


def _stage(emit: Emit, stage: str, fraction: float = 0.0, **extra) -> None:
    emit("progress", stage=stage, fraction=round(fraction, 4), **extra)


def measure_phase(loaded, recipe: Recipe, data, monitor: Monitor, emit: Emit, phase: str, reference,
             do_eval: bool = True) -> tuple[dict, dict]:
    """Bench + eval one model state. Returns (phase report, reference built when ``reference`` is None)."""
    model, tok, task, device = loaded.model, loaded.tokenizer, loaded.task, loaded.device
    monitor.reset_peaks()
    memory.cuda_reset(device, every=bool(getattr(recipe.model, "device_map", None)))
    _stage(emit, f"{phase}: benchmarking")
    timing = bench(model, tok, task, recipe.bench, device,
                   on_progress=lambda f, **kw: _stage(emit, f"{phase}: benchmarking", f, **_rounded(kw)),
                   generate_kwargs=loaded.generate_kwargs if phase != "baseline" else None)
    peaks = monitor.peaks()
    cuda = memory.cuda_peaks(device)
    if getattr(recipe.model, "device_map", None):
        cuda["cuda_peak_allocated_per_device"] = memory.cuda_peaks_per_device()
    from workbench.core.parallel.gather import rank_memory

    ranks = rank_memory(model, device, cuda)  # tensor parallelism: every rank's share (a collective)
    _stage(emit, f"{phase}: evaluating")
    t0 = time.perf_counter()
    metrics, new_ref = evaluate(model, tok, task, data, recipe.eval, device, reference,
                                on_progress=lambda f: _stage(emit, f"{phase}: evaluating", f)) \
        if do_eval else ({}, None)
    gpu_peak = peaks["gpu_used_peak_mb"]
    report = {
        **timing,
        "memory_mb": {
            "rss_peak": peaks["rss_peak_mb"],
            **cuda,
            "nvml_used": sum(gpu_peak.values()) if gpu_peak else None,
            **({"per_rank": ranks["ranks"]} if ranks else {}),
        },
        # under tensor parallelism: what all ranks store together (each its shard; norms on every rank)
        "model_size_mb": sum(r["shard_mb"] for r in ranks["ranks"]) if ranks else
        memory.model_size_bytes(model) / 1e6,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "eval_seconds": time.perf_counter() - t0,
        "metrics": metrics,
    }
    return report, new_ref


def _rounded(detail: dict) -> dict:
    """The bench's progress detail (calls, seconds per call, seconds left) for a progress event."""
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in detail.items()}


def baseline_cache_key(loaded, recipe: Recipe, data, env) -> str:
    """Every setting that changes the baseline's accuracy numbers, and nothing else."""
    return cache.key({
        "model": loaded.fingerprint, "task": loaded.task, "eval": asdict(recipe.eval), "source": data.source,
        "data": data.digest,
        "device": env.get("device_name") or loaded.device, "dtype": str(next(loaded.model.parameters()).dtype),
        # CPU kernels differ by instruction set and its caps (AVX2 vs AVX-512 paths round differently)
        "cpu_kernels": (env.get("cpu_isa") or {}).get("summary") if loaded.device == "cpu" else None,
        "torch": env.get("torch"), "transformers": env.get("transformers"), "schema": 2,
    })


def accuracy_table(base: dict, opt: dict) -> dict:
    out = {}
    for name, value in opt.items():
        if name not in HIGHER_IS_BETTER or name not in base:
            continue
        b = base[name]
        out[name] = {"value": value, "baseline": b, "delta": value - b,
                     "higher_is_better": HIGHER_IS_BETTER[name]}
    return out


def run(recipe: Recipe, emit: Emit, artifact_dir: str | None = None) -> dict:
    from workbench.core import export as export_mod
    from workbench.core.models import load

    started = time.time()
    plan = _memory_plan(recipe, emit)
    _stage(emit, "loading", **({"estimate_mb": round(plan["run_peak_mb"], 1)} if plan else {}))
    lead = group.rank() == 0  # tensor parallelism: rank 0 samples (NVML sees every GPU) and keeps the cache
    monitor = Monitor(hz=recipe.bench.monitor_hz, on_sample=lambda s: emit("sample", **s), gpus=lead)
    if lead:
        monitor.start()
    try:
        t0 = time.perf_counter()
        loaded = load(recipe.model.ref, recipe.model.task, recipe.device, recipe.model.trust_remote_code,
                      recipe.model.revision, recipe.model.device_map,
                      on_progress=lambda f: _stage(emit, "loading", f), tp=recipe.model.tp)
        load_s = time.perf_counter() - t0
        info = loaded.info()
        if recipe.model.tp:
            info["tp"] = recipe.model.tp
        emit("log", level="info", text=f"loaded {info['architecture']} ({info['parameters'] / 1e6:.1f} M params, "
                                       f"{info['dtype']}, task {loaded.task}) on {loaded.device} in {load_s:.1f} s")
        emit("model", **info)
        recipe = recipe.validate(task=loaded.task, device=loaded.device)
        env = environment(loaded.device)
        if recipe.model.tp:
            env.update(tp=recipe.model.tp, tp_backend=group.backend(), tp_devices=group.gather(loaded.device))
        data = load_eval(recipe.eval, loaded.task)

        # Baseline: latency is always measured in this run (speedups are side-by-side ratios, never against an
        # old number); accuracy comes from the cache when this exact model, data and settings were seen before.
        key = baseline_cache_key(loaded, recipe, data, env)
        hit = group.from_rank0(lambda: cache.load_baseline(key))  # every rank takes the same path
        if hit is not None:
            emit("log", level="info", text=f"baseline accuracy from cache ({key[:12]})")
            cached_doc, reference = hit
            base, _ = measure_phase(loaded, recipe, data, monitor, emit, "baseline", None, do_eval=False)
            base["metrics"] = cached_doc["metrics"]
        else:
            base, reference = measure_phase(loaded, recipe, data, monitor, emit, "baseline", None)
            if lead:
                cache.save_baseline(key, {"metrics": base["metrics"], "model": loaded.fingerprint}, reference)
        base["accuracy_cached"] = hit is not None
        emit("result", phase="baseline", report=_strip_samples(base))

        opt_reports = apply_steps(
            loaded, recipe.optimizations, eval_settings=recipe.eval,
            log=lambda text: emit("log", level="info", text=text),
            warn=lambda text: emit("log", level="warning", text=text),
            on_step=lambda name, fraction: _stage(emit, f"applying {name}", fraction),
            on_progress=lambda name, f, **kw: _stage(emit, f"applying {name}", f, **kw),
            on_applied=lambda rep: emit("log", level="info", text=f"applied {rep['name']} in {rep['seconds']:.1f} s"))

        optimized, _ = measure_phase(loaded, recipe, data, monitor, emit, "optimized", reference) \
            if recipe.optimizations else (None, None)
        if optimized is None:  # no optimizations: the run is a baseline measurement; accuracy vs itself
            optimized = base
        report = {
            "schema": 1,
            "model": info,
            "task": loaded.task,
            "device": loaded.device,
            "environment": env,
            "optimizations": [{"name": s.name, "params": s.params} for s in recipe.optimizations],
            "optimization_reports": opt_reports,
            "bench": asdict(recipe.bench),
            "eval": {**asdict(recipe.eval), "source": data.source, "data_sha256": data.digest},
            "baseline": base,
            "optimized": optimized,
            "accuracy": accuracy_table(base["metrics"], optimized["metrics"]),
            "speedup": base["latency_ms"]["p50"] / optimized["latency_ms"]["p50"],
            "size_ratio": optimized["model_size_mb"] / base["model_size_mb"],
            "load_seconds": load_s,
            **_estimate_vs_measured(plan, optimized, loaded.device),
            "monitor_samples": monitor.samples_taken,
            "started": started,
            "seconds": time.time() - started,
            "export": None,
        }
        if artifact_dir:
            _stage(emit, "exporting")
            try:
                if recipe.model.tp:  # gathered into one ordinary folder (rank 0 writes it)
                    from workbench.core.parallel import gather

                    report["export"] = gather.export(loaded, artifact_dir, recipe.to_dict(), opt_reports)
                else:
                    report["export"] = export_mod.save(loaded.model, loaded.tokenizer, loaded.task, artifact_dir,
                                                       recipe.to_dict(), opt_reports, loaded.device)
            except export_mod.ExportError as exc:
                report["export"] = {"verified": False, "error": exc.message}
                emit("log", level="warning", text=f"export skipped: {exc.message}")
        emit("result", phase="final", report=report)
        _stage(emit, "done", 1.0)
        return report
    finally:
        monitor.stop()


def _memory_plan(recipe: Recipe, emit: Emit) -> dict | None:
    """The memory estimate before loading (shown as a log line and on the loading stage); a recipe estimated not
    to fit the GPU is refused here, with the estimate and what would fit, instead of running out of memory later."""
    from workbench.core import memory_plan
    from workbench.core.models import pick_device

    device = group.device() or pick_device(recipe.device)
    est = memory_plan.estimate_for(recipe, device)
    if est is None:
        return None
    if recipe.model.tp:  # every rank computes the same plan: a refusal ends every rank alike
        gpus = None
        if device.startswith("cuda"):
            import torch

            gpus = torch.cuda.device_count()
        plan = memory_plan.plan_tp(est, recipe.model.tp, memory_plan.device_memory_mb(device), gpus)
        emit("log", level="info", text=f"memory estimate of the whole model: {est['run_peak_mb']:.0f} MB; "
                                       + memory_plan.tp_text(plan))
        memory_plan.check_fits_tp(plan, device, recipe.model.ref)
        return {**memory_plan.public(est), "run_peak_mb": plan["run_peak_mb"], "whole_model_peak_mb":
                est["run_peak_mb"], "tp": plan}
    emit("log", level="info", text=f"memory estimate: {est['run_peak_mb']:.0f} MB peak ({est['weights_mb']:.0f} MB "
                                   f"{est['linear_format']} weights, {est['kv_cache_mb']:.0f} MB KV cache, "
                                   f"{est['activations_mb']:.0f} MB activations)")
    gpus = 1
    if device.startswith("cuda"):
        import torch

        gpus = torch.cuda.device_count()
    memory_plan.check_fits(est, device, memory_plan.device_memory_mb(device), recipe.model.ref, gpus,
                           getattr(recipe.model, "device_map", None))
    return memory_plan.public(est)


def _estimate_vs_measured(plan: dict | None, optimized: dict, device: str) -> dict:
    if plan is None:
        return {"estimate_mb": None, "memory_estimate": None}
    mem = optimized.get("memory_mb") or {}
    measured = mem.get("cuda_peak_allocated") if str(device).startswith("cuda") else mem.get("rss_peak")
    return {"estimate_mb": plan["run_peak_mb"], "memory_estimate": plan,
            "estimate_measured_mb": measured,
            "estimate_error": (plan["run_peak_mb"] - measured) / measured if measured else None}


def _strip_samples(phase: dict) -> dict:
    """A copy light enough for a progress event (raw samples go in the final report)."""
    out = dict(phase)
    for k in ("latency_ms", "ttft_ms", "decode_ms_per_token"):
        if out.get(k):
            out[k] = {kk: vv for kk, vv in out[k].items() if kk != "samples"}
    return out
