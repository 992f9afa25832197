"""The memory estimate made before anything is loaded, and the refusal of a recipe that will not fit the device.

``recommend.estimate`` computes it from the config alone (the model is built on the meta device): weights in the
recipe's format, the KV cache for the benchmark's batch and length, activations. Measured on an H200 with a
Llama-3.1-8B-shaped model at batch 1 (benchmarks/results/gpu_8b_h200.md), the estimate was within -0.2 % (bf16),
-1.6 % (int8 weight-only) and -0.9 % (int4 weight-only) of the optimized phase's torch.cuda.max_memory_allocated.
Pruning, layer dropping and 2:4 sparsity are not modelled (the estimate is then the unpruned model's: an upper
bound).
"""

from __future__ import annotations

from workbench.core.errors import InputError


def estimate_for(recipe, device: str) -> dict | None:
    """The estimate for ``recipe`` on ``device`` (already resolved: cpu, cuda, cuda:N), or None when the config
    cannot be read without loading (then nothing is refused)."""
    from workbench.core import optimizations, recommend
    from workbench.core.modelref import resolve

    try:
        if resolve(recipe.model.ref).gguf_file:  # reading a GGUF's config parses the file: the loader does that
            return None
        facts = recommend.model_facts(recipe.model.ref, recipe.model.task, recipe.model.trust_remote_code)
        hw = recommend.hardware(device, measure=False)
        steps = [{"name": s.name, "params": optimizations.get(s.name).resolve(s.params)}
                 for s in recipe.optimizations]
        b = recipe.bench
        c = recommend.Constraints(batch=b.batch, seq_len=b.seq_len, new_tokens=b.new_tokens)
        est = recommend.estimate(facts, steps, hw, c)
    except Exception:  # an estimate is advice: a config it cannot read is the loader's to report
        return None
    est["facts"] = {k: facts.get(k) for k in ("params", "linear_params", "layers", "stored_dtype")}
    est["_facts"], est["_hw"], est["_steps"], est["_c"] = facts, hw, steps, c
    return est


def device_memory_mb(device: str) -> float | None:
    if not str(device).startswith("cuda"):
        return None
    import torch

    idx = torch.device(device).index or 0
    return torch.cuda.get_device_properties(idx).total_memory / 2**20


def check_fits(est: dict | None, device: str, total_mb: float | None, ref: str, gpus: int = 1,
               device_map: str | None = None) -> None:
    """Refuse, before loading, a recipe whose estimated peak exceeds the device's memory (one line: the estimate,
    the device's memory and what would fit)."""
    if est is None or total_mb is None or device_map is not None:
        return
    need = est["run_peak_mb"]
    if need <= total_mb:
        return
    hints = []
    names = [s["name"] for s in est.get("_steps", [])]
    if "int4-weight-only" not in names and est.get("_facts") is not None:
        from workbench.core import recommend

        steps = [s for s in est["_steps"] if s["name"] not in ("int8-weight-only", "fp8-weight-only", "fp8-dynamic",
                                                                "int8-dynamic-act", "int8-selective")]
        i4 = recommend.estimate(est["_facts"], steps + [{"name": "int4-weight-only", "params": {}}], est["_hw"],
                                est["_c"])
        hints.append(f"the optimization int4-weight-only (about {i4['run_peak_mb']:.0f} MB"
                     f"{', fits' if i4['run_peak_mb'] <= total_mb else ', still too big'})")
    if gpus > 1:
        hints.append(f"device_map balanced over the {gpus} GPUs (about {need / gpus:.0f} MB each)")
    else:
        hints.append("device_map balanced on a machine with more GPUs")
    raise InputError(f"{ref}: the estimated peak memory is {need:.0f} MB ({est['weights_mb']:.0f} MB of "
                     f"{est['linear_format']} weights) and {device} has {total_mb:.0f} MB; expected a recipe that "
                     f"fits: {' or '.join(hints)}", param="model")


def public(est: dict | None) -> dict | None:
    """The estimate as it goes into reports and events (no internals)."""
    if est is None:
        return None
    return {k: v for k, v in est.items() if not k.startswith("_")}
