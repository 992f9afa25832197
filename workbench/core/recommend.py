"""Strategy recommender: from the model, the measured hardware and the user's constraints, propose a recipe with a
reason for every step and estimates of memory and latency made before anything runs; after the recipe ran, the
estimates are compared with what was measured and the error is shown.

Estimates (all computed from the config on the meta device, no weights loaded):
- weights: every parameter at the bytes it will have after the recipe (int8 = 1 byte + scales, int4 = 0.5 byte +
  group scales, bf16 = 2 ...), tied embeddings once;
- KV cache (causal LMs): 2 x layers x kv_heads x head_dim x (prompt + new tokens) x batch x bytes;
- activations: the largest transient tensors of one forward (hidden/FFN/attention scores, logits of the last token);
- runtime: this process's resident memory after importing torch + transformers (measured now), CPU only;
- latency: roofline lower bounds from a measured matmul rate (fp32 on CPU, bf16 on a GPU) and copy bandwidth of this
  machine — prefill/encoder
  compute-bound (2 x params x tokens / FLOP rate), decode memory-bound (weight bytes / bandwidth per token).
Roofline bounds are optimistic by construction (kernels, Python overhead and launches are not free); the check after
the run says by how much.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

from workbench.core.errors import InputError


@dataclass
class Constraints:
    memory_mb: float | None = None  # memory cap: GPU memory on a GPU, process memory (RSS) on CPU
    latency_ms: float | None = None  # p50 latency target of the benchmark workload
    max_drop: float = 1.0  # allowed accuracy drop in percent (cosine / agreement / next-token agreement)
    batch: int | None = None
    seq_len: int = 128
    new_tokens: int = 32


# ------------------------------------------------------------------ hardware

def measure_cpu(seconds: float = 1.0) -> dict:
    """This machine's best observed fp32 matmul rate (all torch threads) and memory-copy bandwidth: the peak of
    several short runs, since a roofline wants what the hardware can do, not what a busy moment allowed."""
    import torch

    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best, end = 0.0, time.perf_counter() + seconds / 2
    while time.perf_counter() < end:
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t))
    src = torch.empty(64 * 2 ** 20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    bw, end = 0.0, time.perf_counter() + seconds / 2
    while time.perf_counter() < end:
        t = time.perf_counter()
        dst.copy_(src)
        bw = max(bw, 2 * src.numel() * 4 / (time.perf_counter() - t))  # read + write
    return {"fp32_gflops": best / 1e9, "copy_gb_s": bw / 1e9}


def measure_gpu(index: int, seconds: float = 1.0) -> dict:
    """Best observed bf16 matmul rate and device-memory copy bandwidth of one GPU (CUDA events, synchronized)."""
    import torch

    dev = torch.device("cuda", index)
    n = 4096
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    src = torch.empty(256 * 2 ** 20 // 2, device=dev, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def best(fn, work: float) -> float:
        for _ in range(3):
            fn()
        top, stop = 0.0, time.perf_counter() + seconds / 2
        while time.perf_counter() < stop:
            start.record()
            fn()
            end.record()
            end.synchronize()
            top = max(top, work / (start.elapsed_time(end) / 1000))
        return top

    flops = best(lambda: a @ b, 2 * n ** 3)
    bw = best(lambda: dst.copy_(src), 2 * src.numel() * 2)
    return {"bf16_gflops": flops / 1e9, "copy_gb_s": bw / 1e9}


def hardware(device: str = "auto", measure: bool = True) -> dict:
    import psutil
    import torch

    from workbench.core.measure import cpu as cpu_isa

    isa = cpu_isa.describe()
    hw = {
        "cpu_cores": os.cpu_count(),
        "cpu_physical_cores": psutil.cpu_count(logical=False),
        "ram_mb": psutil.virtual_memory().total / 2 ** 20,
        "ram_available_mb": psutil.virtual_memory().available / 2 ** 20,
        "avx2": isa["avx2"], "avx512": isa["avx512"], "avx512_bf16": isa["avx512_bf16"],
        "amx": isa["amx_bf16"] or isa["amx_int8"],
        # usable under this process's kernel caps (ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA), not only present
        "bf16_native": isa["bf16_native"], "int8_vnni": isa["int8_vnni"], "cpu_isa": isa["summary"],
        "torch_threads": torch.get_num_threads(),
        "gpu": None,
    }
    use_gpu = torch.cuda.is_available() and device != "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"{device}: no CUDA GPU is visible here; expected device cpu or auto", param="device")
    if use_gpu:
        idx = torch.device(device).index or 0 if device.startswith("cuda") else 0
        props = torch.cuda.get_device_properties(idx)
        hw["gpu"] = {"name": props.name, "memory_mb": props.total_memory / 2 ** 20,
                     "compute_capability": f"{props.major}.{props.minor}", "count": torch.cuda.device_count(),
                     "cc": (props.major, props.minor)}
        hw["device"] = f"cuda:{idx}"
        if measure:
            hw.update(measure_gpu(idx))
    else:
        hw["device"] = "cpu"
        if measure:
            hw.update(measure_cpu())
    return hw


# ------------------------------------------------------------------ model facts

def model_facts(ref: str, task: str | None = None, trust_remote_code: bool = False) -> dict:
    """Sizes from the config alone (model built on the meta device: no weights read)."""
    import torch
    import transformers

    from workbench.core.modelref import resolve
    from workbench.core.models import auto_class, detect_task

    r = resolve(ref)
    source = r.path or r.hub_id
    kw = {"trust_remote_code": trust_remote_code}
    if r.gguf_file:
        kw["gguf_file"] = r.gguf_file
    try:
        config = transformers.AutoConfig.from_pretrained(source, **kw)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{ref}: could not read its config ({str(exc).splitlines()[0][:200]})",
                         param="model") from None
    task = task or r.task_hint or detect_task(config)
    with torch.device("meta"):
        model = auto_class(task).from_config(config)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    emb = model.get_input_embeddings()
    tied = head is not None and head.weight is emb.weight
    linear = 0
    head_names = {n for n, m in model.named_modules() if m is head or n.split(".")[-1] in ("classifier", "score")}
    for n, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and n not in head_names:
            linear += m.weight.numel()
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    heads = getattr(config, "num_attention_heads", 1)
    return {
        "ref": ref, "task": task, "model_type": getattr(config, "model_type", None),
        "architecture": (getattr(config, "architectures", None) or [type(model).__name__])[0],
        "params": total, "linear_params": linear,
        "head_params": 0 if (head is None or tied) else head.weight.numel(),
        "embedding_params": emb.weight.numel(), "tied_embeddings": tied,
        "layers": getattr(config, "num_hidden_layers", None), "hidden": getattr(config, "hidden_size", None),
        "intermediate": getattr(config, "intermediate_size", None), "heads": heads,
        "kv_heads": getattr(config, "num_key_value_heads", None) or heads,
        "head_dim": getattr(config, "head_dim", None) or (config.hidden_size // heads),
        "vocab": getattr(config, "vocab_size", None),
        "stored_dtype": str(stored).replace("torch.", "") if stored is not None else None,
        "gguf": bool(r.gguf_file),
    }


# ------------------------------------------------------------------ estimates

_FLOAT_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0}  # Linear weights no step quantized


def _specs() -> dict:
    from workbench.core.optimizations import all_specs

    return {s.name: s for s in all_specs()}


def estimate(facts: dict, recipe_steps: list[dict], hw: dict, c: Constraints) -> dict:
    """Memory and latency estimates for ``facts`` after ``recipe_steps`` on ``hw``."""
    import psutil

    gpu = hw.get("gpu") is not None
    specs = _specs()
    steps = [(specs[s["name"]], s.get("params") or {}) for s in recipe_steps if s["name"] in specs]
    dtype = "fp32" if not gpu else ("bf16" if (facts["stored_dtype"] in (None, "bfloat16", "float32")) else "fp16")
    for spec, _ in steps:  # a precision step (at most one per recipe) sets the float dtype
        if spec.precision:
            dtype = spec.precision
    elem = 4.0 if dtype == "fp32" else 2.0
    linear_kind = dtype
    row = facts["hidden"] or 1024
    linear_bytes, kept_fraction = _FLOAT_BYTES[dtype], 1.0
    for spec, params in steps:  # the last step that stores the Linear weights its own way decides their bytes
        storage = spec.weight_storage(params)
        if storage is None:
            continue
        linear_kind = storage.format
        linear_bytes = storage.bytes_per_param(128, row)
        kept_fraction = storage.kept_fraction
        if storage.float_bytes is not None:
            elem = storage.float_bytes
    if linear_kind in _FLOAT_BYTES and any(spec.extra.get("copies_linear_weights") for spec, _ in steps):
        linear_bytes *= 2  # onednn-linear: a packed copy beside every float Linear weight
    lin = facts["linear_params"]
    other = facts["params"] - lin
    weights = other * elem + lin * (kept_fraction * linear_bytes + (1 - kept_fraction) * elem)
    batch = c.batch or (1 if facts["task"] == "causal-lm" else 8)
    tokens = c.seq_len + (c.new_tokens if facts["task"] == "causal-lm" else 0)
    kv = 0.0
    if facts["task"] == "causal-lm":
        kv = 2 * facts["layers"] * facts["kv_heads"] * facts["head_dim"] * tokens * batch * elem
    h = facts["hidden"] or 0
    inter = facts["intermediate"] or 4 * h
    act = batch * c.seq_len * (3 * h + inter) * 4 + batch * facts["heads"] * c.seq_len * c.seq_len * 4
    if facts["task"] == "causal-lm":
        act += batch * (facts["vocab"] or 0) * 4
    runtime = 0.0 if gpu else psutil.Process().memory_info().rss
    fp32_weights = facts["params"] * 4.0
    mb = 2 ** 20
    out = {
        "dtype": dtype, "linear_format": linear_kind,
        "weights_mb": weights / mb, "kv_cache_mb": kv / mb, "activations_mb": act / mb,
        "runtime_mb": runtime / mb,
        "deployed_mb": (runtime + weights + kv + act) / mb,
        # optbench run first holds the fp32 baseline on CPU (the allocator keeps freed pages): the run's peak is
        # the larger of the two phases, plus the quantized copy made while the fp32 weights still exist
        "run_peak_mb": (runtime + max(fp32_weights, weights) + (weights if weights < fp32_weights else 0) + kv + act) / mb
        if not gpu else (weights + kv + act) / mb,
    }
    # roofline lower bounds
    flops_rate = (hw.get("bf16_gflops") if gpu else hw.get("fp32_gflops")) or 0
    flops_rate *= 1e9
    bw = (hw.get("copy_gb_s") or 0) * 1e9
    if flops_rate and bw:
        work_params = facts["params"] - facts["embedding_params"] + (facts["embedding_params"]
                                                                      if facts["task"] == "causal-lm" else 0)
        if facts["task"] == "causal-lm":
            prefill = 2 * work_params * c.seq_len * batch / flops_rate
            per_token = max((weights - facts["embedding_params"] * elem * (0 if facts["tied_embeddings"] else 1))
                            / bw, 2 * work_params * batch / flops_rate)
            out["latency_ms"] = (prefill + per_token * (c.new_tokens - 1)) * 1000
            out["decode_ms_per_token"] = per_token * 1000
            if linear_kind.startswith("int8-dynamic") and not gpu and prefill > per_token * c.new_tokens:
                out["latency_ms"] /= 2.0  # int8 GEMMs (fbgemm) do about twice the fp32 rate
        else:
            t = 2 * work_params * c.seq_len * batch / flops_rate
            if linear_kind.startswith("int8") and not gpu:
                t /= 2.0
            out["latency_ms"] = t * 1000
        out["latency_basis"] = (f"roofline lower bound (measured {'bf16' if gpu else 'fp32'} matmul rate and copy "
                                f"bandwidth)")
    return out


# ------------------------------------------------------------------ rules

# CPU runtimes on demo:minilm (benchmarks/results/cpu_catalogue_epyc-avx512vnni-bf16.md, 2-core EPYC with
# AVX512-VNNI and AVX512-BF16, batch 8 x 128, uncontended rows): openvino-int8 3.6x (bf16 precision 4.1x) at cosine
# 0.997, onnx-int8 2.2x at 0.994, openvino bf16 2.8x and f32 1.7x at 1.000, onnx 1.3x, torch bf16 2.1x.
RUNTIME_INT8_DROP = 0.5  # the int8 runtimes cost 0.3-0.6 % cosine on MiniLM: not for a tighter budget
RUNTIME_REASONS = {
    "openvino-int8": "encoder on CPU with OpenVINO + NNCF installed: static INT8 calibrated on text was the fastest "
                     "option measured within a 1 % budget (MiniLM 3.6x at cosine 0.997 on a 2-core VNNI EPYC)",
    "onnx-int8": "encoder on CPU with ONNX Runtime installed: dynamic INT8 with fused attention (MiniLM 2.2x at "
                 "cosine 0.994)",
    "openvino": "encoder on CPU with OpenVINO installed, budget too tight for INT8: OpenVINO's CPU plugin (MiniLM "
                "1.7x in f32, 2.8x in bf16, cosine 1.000)",
    "onnx": "encoder on CPU with ONNX Runtime installed, budget too tight for INT8: ONNX Runtime with fused "
            "attention (MiniLM 1.3x, cosine 1.000)",
}

def _step(name: str, params: dict, reason: str) -> dict:
    return {"name": name, "params": params, "reason": reason}


def _cuda_int8(facts: dict, c: Constraints, why: str) -> dict:
    """int8-weight-only on CUDA with the kernel measured to pay at this batch and model size (_batch_notes): GemLite
    for causal LMs where it is installed and paid, else torchao's, with its measured limit said."""
    import importlib.util

    from workbench.core.optimizations import _batch_notes

    batch = c.batch or 1
    ao = _batch_notes.note("int8-weight-only", "torchao", facts["params"])
    if facts["task"] == "causal-lm" and importlib.util.find_spec("gemlite") is not None:
        gl = _batch_notes.note("int8-weight-only", "gemlite", facts["params"])
        # GemLite where it paid; also where neither paid (torchao's kernel fell furthest: 0.05x at 1B batch 8)
        if batch <= gl["pays_at_batch"] or batch > ao["pays_at_batch"]:
            caveat = f" (at batch {batch} it may be slower than bf16)" if batch > gl["pays_at_batch"] else ""
            return _step("int8-weight-only", {"kernel": "gemlite"}, f"{why}; GemLite's int8 kernel{caveat}: "
                         f"{gl['batch_note']}; not exportable (drop kernel=gemlite to export)")
    caveat = (f"; at batch {batch} it may be slower than bf16: {ao['batch_note']}"
              if batch > ao["pays_at_batch"] else "")
    return _step("int8-weight-only", {}, why + caveat)


def propose(facts: dict, hw: dict, c: Constraints) -> list[dict]:
    gpu = hw.get("gpu")
    task = facts["task"]
    drop = c.max_drop
    steps: list[dict] = []
    if gpu:
        cc = tuple(gpu["cc"])
        half = "bf16" if cc >= (8, 0) else "fp16"
        steps.append(_step(half, {}, f"{gpu['name']} (compute {gpu['compute_capability']}): {half} halves the "
                                     f"weight bytes and runs on tensor cores"))
        fp16_weights = facts["params"] * 2 / 2 ** 20
        if c.memory_mb and fp16_weights > 0.8 * c.memory_mb:
            if fp16_weights / 2 <= 0.8 * c.memory_mb or drop < 2:
                steps.append(_cuda_int8(facts, c, f"{fp16_weights:.0f} MB of {half} weights exceed 80 % of the "
                                                  f"{c.memory_mb:.0f} MB cap; int8 weights halve them"))
            else:
                from workbench.core.optimizations.quant_calibrate import FOLDABLE

                awq = task == "causal-lm" and facts.get("model_type") in FOLDABLE
                steps.append(_step("int4-weight-only", {"group_size": 128, "algorithm": "awq" if awq else "hqq"},
                                   f"{fp16_weights:.0f} MB of weights need a 4x cut to fit {c.memory_mb:.0f} MB; "
                                   f"int4 (group 128) costs some accuracy, allowed by the {drop}% budget; "
                                   + ("AWQ calibrates scales on text (on SmolLM2 on an H200: +10.7 % perplexity vs "
                                      "+30.5 % for round to nearest, group 64)" if awq else
                                      "HQQ optimises scales without data (+20.2 % vs +30.5 % for round to nearest "
                                      "on SmolLM2, H200, group 64)")))
        if task == "causal-lm":
            if (c.batch or 1) <= 8:
                steps.append(_step("graph-decode", {"mode": "graph"}, "small-batch decode is launch-bound on a GPU: a "
                                   "static KV cache and the whole step replayed as one CUDA graph remove the host "
                                   "overhead (measured 24 % of roofline vs ~4 % for eager sdpa)"))
            else:
                steps.append(_step("kv-cache", {"cache": "static"}, "large-batch decode: a static cache lets "
                                   "transformers compile the decode step"))
        else:
            steps.append(_step("compile", {"mode": "max-autotune-no-cudagraphs"}, "fixed-shape encoder: inductor "
                               "fuses the elementwise work around the matmuls"))
        return steps
    # CPU. Measured here (benchmarks/results/cpu_catalogue.md, 2-core AVX512-BF16 CPU): bf16 cast 3.3x on MiniLM
    # (cosine 1.0000) and 1.9x decode on SmolLM2 (perplexity -0.1 %); torch.ao int8-dynamic 2.7x on MiniLM at cosine
    # 0.927 and destructive on SmolLM2 (next-token agreement 0.52); torchao int8 weight-only 1.3x decode on SmolLM2
    # at KL 0.003.
    runtime = _cpu_runtime_step(facts, hw, drop)
    if runtime is not None:
        return [runtime]
    bf16_hw = hw.get("bf16_native")  # without native bf16 matmuls a cast is emulated: 2.9x slower on an AVX2 EPYC
    if bf16_hw:
        steps.append(_step("bf16", {}, "this CPU has native bfloat16 matmuls (AVX512-BF16/AMX): a bf16 cast halves "
                                       "the weights and was the fastest CPU option measured here at no measurable "
                                       "accuracy cost (MiniLM 3.3x, SmolLM2 decode 1.9x)"))
    fp32_mb = facts["params"] * 4 / 2 ** 20
    need_cut = c.memory_mb is not None and (fp32_mb / (2 if bf16_hw else 1)) > 0.5 * c.memory_mb
    if task == "causal-lm":
        if not bf16_hw or need_cut:
            steps.append(_step("int8-weight-only", {}, "decode is memory-bound at small batch: int8 weights read "
                               "4x fewer bytes than fp32 (measured 1.3x on SmolLM2 at KL 0.003); torch.ao "
                               "int8-dynamic was faster but destroyed SmolLM2's predictions (agreement 0.52)"
                               + (f"; also needed for the {c.memory_mb:.0f} MB cap" if need_cut else "")))
    elif not bf16_hw or need_cut:
        if drop >= 7.0:
            steps.append(_step("int8-dynamic", {}, "encoder on CPU: dynamic INT8 is the fastest integer path "
                               "(fbgemm; 2.7x on MiniLM); its cosine drop (about 7 % on MiniLM) fits the budget"))
        else:
            target = round(1.0 - drop / 100 + 0.002, 4)
            steps.append(_step("int8-selective", {"min_cosine": min(0.999, target)},
                               f"the {drop}% budget rules out plain dynamic INT8 (about 7 % cosine drop on MiniLM): "
                               f"quantize every layer but the most sensitive ones, which stay fp32 until the "
                               f"calibration cosine reaches {min(0.999, target)}"))
        if bf16_hw and steps and steps[0]["name"] == "bf16":
            steps.pop(0)  # the int8 kernels take fp32 activations: no bf16 cast before them
    est = estimate(facts, steps, hw, c)
    if c.latency_ms and est.get("latency_ms") and est["latency_ms"] > c.latency_ms and drop >= 10:
        steps.insert(0, _step("drop-layers", {"fraction": 0.5, "which": "importance"}, f"the roofline estimate "
                              f"({est['latency_ms']:.0f} ms) misses the {c.latency_ms:.0f} ms target even quantized; "
                              f"the {drop}% budget allows dropping half the blocks (measured removal error decides "
                              f"which)"))
    return steps


def cpu_runtimes_installed() -> list[str]:
    """The CPU runtimes whose packages (``OptSpec.requires``) import here (``recommend`` adds them to the hardware
    facts)."""
    import importlib.util

    from workbench.core.optimizations.cpu_runtimes import RUNTIME_OPTS

    specs = _specs()
    return [name for name in RUNTIME_OPTS if all(importlib.util.find_spec(m) is not None for m in specs[name].requires)]


def _cpu_runtime_step(facts: dict, hw: dict, drop: float) -> dict | None:
    """Encoders / classifiers on CPU with ONNX Runtime or OpenVINO installed (``hw["cpu_runtimes"]``): the runtime
    measured fastest within the budget (benchmarks/results/cpu_catalogue_<cpu>.md)."""
    have = set(hw.get("cpu_runtimes") or ())
    if facts["task"] == "causal-lm" or not have:
        return None
    vnni = hw.get("int8_vnni")
    if drop >= RUNTIME_INT8_DROP and "openvino-int8" in have:
        bf16 = bool(hw.get("bf16_native"))
        return _step("openvino-int8", {"precision": "auto"} if bf16 else {}, RUNTIME_REASONS["openvino-int8"] + (
            "; the layers left in float run in bf16 (AVX512-BF16/AMX here: 4.1x instead of 3.6x)" if bf16 else "")
            + ("" if vnni else "; this CPU has no VNNI, so its int8 matmuls are slower than where it was measured"))
    if drop >= RUNTIME_INT8_DROP and "onnx-int8" in have:
        return _step("onnx-int8", {}, RUNTIME_REASONS["onnx-int8"])
    if "openvino" in have:
        precision = "auto" if hw.get("bf16_native") else "f32"
        return _step("openvino", {"precision": precision}, RUNTIME_REASONS["openvino"] + (
            " in bf16 (this CPU has AVX512-BF16/AMX)" if precision == "auto" else " in f32"))
    if "onnx" in have:
        return _step("onnx", {}, RUNTIME_REASONS["onnx"])
    return None


def recommend(model_ref: str, constraints: Constraints, task: str | None = None, device: str = "auto",
              measure: bool = True) -> dict:
    """A recipe with reasons and estimates. Torch is imported; nothing is loaded but the config."""
    t0 = time.perf_counter()
    hw = hardware(device, measure=measure)
    if hw.get("gpu") is None:
        hw["cpu_runtimes"] = cpu_runtimes_installed()
    facts = model_facts(model_ref, task)
    steps = propose(facts, hw, constraints)
    est = estimate(facts, steps, hw, constraints)
    warnings = []
    if constraints.memory_mb and est["deployed_mb"] > constraints.memory_mb:
        warnings.append(f"estimated {est['deployed_mb']:.0f} MB exceeds the {constraints.memory_mb:.0f} MB cap even "
                        f"with this recipe")
    if constraints.latency_ms and est.get("latency_ms") and est["latency_ms"] > constraints.latency_ms:
        warnings.append(f"roofline estimate {est['latency_ms']:.0f} ms is above the {constraints.latency_ms:.0f} ms "
                        f"target: no recipe within the accuracy budget is expected to meet it")
    recipe = {
        "model": {"ref": model_ref, **({"task": task} if task else {})},
        "optimizations": [{"name": s["name"], "params": s["params"]} for s in steps],
        "bench": {k: v for k, v in {"batch": constraints.batch, "seq_len": constraints.seq_len,
                                    "new_tokens": constraints.new_tokens}.items() if v is not None},
        "device": hw["device"],
    }
    return {"model": facts, "hardware": {k: v for k, v in hw.items() if k != "gpu"} | {"gpu": _plain_gpu(hw)},
            "constraints": asdict(constraints), "steps": steps, "recipe": recipe, "estimate": est,
            "warnings": warnings, "seconds": time.perf_counter() - t0}


def _plain_gpu(hw):
    g = hw.get("gpu")
    return None if g is None else {k: v for k, v in g.items() if k != "cc"}


def check(rec: dict, report: dict) -> dict:
    """Estimate versus measured, with the relative error (estimate - measured) / measured."""
    est = rec["estimate"]
    opt = report.get("optimized") or {}
    gpu = str(report.get("device", "")).startswith("cuda")
    rows = []

    def row(what, e, m, note=""):
        if e is None or m is None:
            return
        rows.append({"what": what, "estimate": e, "measured": m, "error": (e - m) / m if m else None,
                     "note": note})

    row("weights (MB)", est["weights_mb"], opt.get("model_size_mb", 0) * 1e6 / 2 ** 20 if opt else None,
        "model size as stored (parameters + buffers)")
    mem = opt.get("memory_mb") or {}
    if gpu:
        row("peak memory (MB)", est["run_peak_mb"], mem.get("cuda_peak_allocated"),
            "torch.cuda.max_memory_allocated in the optimized phase")
    else:
        row("peak memory (MB)", est["run_peak_mb"], mem.get("rss_peak"),
            "process RSS peak in the optimized phase (includes what the fp32 baseline left in the allocator)")
    lat = (opt.get("latency_ms") or {}).get("p50")
    row("latency p50 (ms)", est.get("latency_ms"), lat, est.get("latency_basis", ""))
    if report.get("task") == "causal-lm":
        row("decode ms/token", est.get("decode_ms_per_token"), (opt.get("decode_ms_per_token") or {}).get("p50"),
            "memory-bound roofline: weight bytes / copy bandwidth")
    drops = {}
    for name, a in (report.get("accuracy") or {}).items():
        if a.get("baseline"):
            rel = (a["value"] - a["baseline"]) / abs(a["baseline"]) * (1 if a["higher_is_better"] else -1)
            drops[name] = -100 * rel
    budget = rec["constraints"]["max_drop"]
    within = {k: v <= budget for k, v in drops.items() if k in ("cosine_to_baseline", "next_token_agreement",
                                                                 "agreement", "accuracy")}
    return {"rows": rows, "accuracy_drop_percent": drops, "within_budget": within, "speedup": report.get("speedup")}
