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


# ------------------------------------------------------------------ tensor parallelism

def per_rank(est: dict, tp: int) -> dict:
    """The estimate's share on each of ``tp`` ranks under transformers' tensor-parallel plan (Llama-style): the
    Linear layers, the embeddings and the head are split (``1/tp`` each), the norms are replicated; the KV cache is
    split by KV heads; of the activations the hidden states and the last token's logits (gathered) are whole on every
    rank, the FFN intermediate and the attention scores split. On a CPU every rank also carries the runtime (its own
    Python + torch + transformers)."""
    f, c = est["_facts"], est["_c"]
    mb = 2 ** 20
    sharded = (f["linear_params"] + f["embedding_params"] + f["head_params"]) / max(1, f["params"])
    sharded = min(1.0, sharded)
    keep = sharded / tp + (1 - sharded)
    weights = est["weights_mb"] * keep
    kv = est["kv_cache_mb"] / tp
    causal = f["task"] == "causal-lm"
    batch = c.batch or (1 if causal else 8)
    h = f["hidden"] or 0
    inter = f["intermediate"] or 4 * h
    act = (batch * c.seq_len * 3 * h * 4 + batch * c.seq_len * inter * 4 / tp
           + batch * f["heads"] * c.seq_len * c.seq_len * 4 / tp + (batch * (f["vocab"] or 0) * 4 if causal else 0)) / mb
    runtime = est.get("runtime_mb") or 0.0
    if est.get("_hw", {}).get("gpu") is not None:
        peak = weights + kv + act
    else:  # the CPU peak's float32 baseline and quantized copy scale with the weights
        peak = runtime + (est["run_peak_mb"] - runtime - est["kv_cache_mb"] - est["activations_mb"]) * keep + kv + act
    return {"tp": tp, "weights_mb": weights, "kv_cache_mb": kv, "activations_mb": act, "run_peak_mb": peak,
            "sharded_fraction": sharded}


def degrees(facts: dict, limit: int = 64) -> list[int]:
    """The degrees that split the model's heads and KV heads evenly, up to ``limit``."""
    heads = facts.get("heads") or 1
    kv = facts.get("kv_heads") or heads
    return [d for d in range(2, limit + 1) if heads % d == 0 and kv % d == 0]


def smallest_degree(est: dict, total_mb: float | None, limit: int = 64) -> int | None:
    """The smallest degree (1: no split) whose per-rank peak fits ``total_mb`` per device; None when none up to
    ``limit`` does (or the device's memory is unknown)."""
    if total_mb is None:
        return None
    if est["run_peak_mb"] <= total_mb:
        return 1
    for d in degrees(est["_facts"], limit):
        if per_rank(est, d)["run_peak_mb"] <= total_mb:
            return d
    return None


def plan_tp(est: dict | None, tp: int, total_mb: float | None, gpus: int | None) -> dict | None:
    """The per-rank plan at ``tp`` and the smallest degree that fits (up to the visible GPUs), for events and
    reports."""
    if est is None:
        return None
    share = per_rank(est, tp)
    limit = gpus if gpus else 64
    share["device_memory_mb"] = total_mb
    share["smallest_fitting_degree"] = smallest_degree(est, total_mb, limit)
    share["degrees"] = degrees(est["_facts"], limit)
    return share


def check_fits_tp(plan: dict | None, device: str, ref: str) -> None:
    """Refuse, before loading, a degree whose per-rank peak exceeds one device's memory."""
    if plan is None or plan["device_memory_mb"] is None or plan["run_peak_mb"] <= plan["device_memory_mb"]:
        return
    fit = plan["smallest_fitting_degree"]
    what = (f"a degree that fits: {fit}" if fit and fit > plan["tp"] else
            "a smaller batch or sequence length, or more GPUs (no degree up to the visible GPUs fits)")
    raise InputError(f"{ref}: at tensor-parallel degree {plan['tp']} the estimated peak per GPU is "
                     f"{plan['run_peak_mb']:.0f} MB ({plan['weights_mb']:.0f} MB weights, {plan['kv_cache_mb']:.0f} MB "
                     f"KV cache) and each GPU ({device}) has {plan['device_memory_mb']:.0f} MB; expected {what}",
                     param="tp")


def tp_text(plan: dict) -> str:
    fit = plan.get("smallest_fitting_degree")
    text = (f"memory plan at tp {plan['tp']}: {plan['run_peak_mb']:.0f} MB peak per rank ({plan['weights_mb']:.0f} MB "
            f"weights, {plan['kv_cache_mb']:.0f} MB KV cache, {plan['activations_mb']:.0f} MB activations)")
    if plan.get("device_memory_mb") is not None:
        text += (f"; smallest degree that fits {plan['device_memory_mb']:.0f} MB per GPU: "
                 f"{fit if fit is not None else 'none up to the visible GPUs'}")
    return text


def public(est: dict | None) -> dict | None:
    """The estimate as it goes into reports and events (no internals)."""
    if est is None:
        return None
    return {k: v for k, v in est.items() if not k.startswith("_")}
