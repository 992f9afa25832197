"""Selective INT8 quantization: measure each Linear layer's sensitivity, keep the most sensitive ones in fp32 (or
bf16, ``keep_dtype``).

Sensitivity of a layer = the output error on calibration data when only that layer is quantized (encoders:
1 - cosine of the mean-pooled embeddings; causal LMs and classifiers: KL(fp32 || quantized) per position).
Layers are then kept in fp32 from the most sensitive down, either a fixed number (``keep``) or the fewest that bring
the calibration error within the target (binary search over the sensitivity order; the error is checked with all
the other layers quantized together, not assumed additive). Calibration text comes from the end of the built-in
text, away from the evaluation text (core/optimizations/calibration.py).
"""

from __future__ import annotations

from workbench.core.errors import InputError
from workbench.core.optimizations.base import Applied, Param, WeightStorage, register

SCHEMES = ("per-tensor", "per-channel", "torchao")
HALF = "selective INT8 quantizes from float32 Linear layers; drop the half-precision cast"


def _storage(params: dict) -> WeightStorage:
    """int8 weights (per-tensor: no scales per row; per-channel and torchao: one per row); typically 10-25 % of the
    layers (the heavy FFN ones) stay in float."""
    if params.get("scheme") == "per-tensor":
        return WeightStorage("int8-dynamic", 1.0, kept_fraction=0.8)
    return WeightStorage("int8-dynamic:per-channel", 1.0, bytes_per_row=16, kept_fraction=0.8)


def _quantized_copy(module, scheme: str):
    """A quantized twin of one nn.Linear (the original is left untouched)."""
    import copy
    import warnings

    import torch

    if scheme in ("per-tensor", "per-channel"):
        from torch.ao.nn.quantized.dynamic import Linear as DynLinear

        f = copy.deepcopy(module)
        f.qconfig = (torch.ao.quantization.per_channel_dynamic_qconfig if scheme == "per-channel"
                     else torch.ao.quantization.default_dynamic_qconfig)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return DynLinear.from_float(f)
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    holder = torch.nn.Sequential(copy.deepcopy(module))
    quantize_(holder, Int8DynamicActivationInt8WeightConfig())
    return holder[0]


def _half_twin(module, dtype):
    """A Linear computing in ``dtype`` between fp32 activations: cast in, matmul, cast out."""
    import copy

    import torch

    class HalfLinear(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.to(dtype)).to(x.dtype)

    return HalfLinear(copy.deepcopy(module).to(dtype))


@register(
    name="int8-selective", family="quantization", stage="quantize", exclusive_group="weight-quantization",
    tp_reason=("it quantizes layers with torch.ao, which swaps each nn.Linear for its own quantized module and "
               "cannot take a DTensor shard"),
    summary="INT8 dynamic quantization of every Linear layer except the most sensitive ones (measured one by one "
            "on calibration text), which stay fp32 until the accuracy target holds.",
    params=(
        Param("scheme", str, "per-channel", "per-tensor: torch.ao default (what int8-dynamic does; fastest, least "
              "accurate); per-channel: torch.ao per-channel weight scales; torchao: per-token activations + "
              "per-channel weights", choices=SCHEMES, search=SCHEMES),
        Param("keep", int, -1, "layers kept in fp32, most sensitive first; -1: the fewest that meet the target",
              min=-1, max=100000, search=(-1, 2, 4)),
        Param("min_cosine", float, 0.992, "encoders: calibration cosine to the fp32 embeddings to reach "
              "(a little above 0.99: calibration and evaluation texts differ)", min=0.0, max=1.0),
        Param("max_kl", float, 0.02, "causal LMs / classifiers: calibration KL(fp32 || quantized) per token to "
              "stay under", min=0.0, max=100.0),
        Param("keep_dtype", str, "fp32", "precision of the kept layers: fp32, or bf16 (weights and matmul in "
              "bfloat16, fp32 in and out: fast on CPUs with AVX512-BF16/AMX and on GPUs; not exportable)",
              choices=("fp32", "bf16"), search=("fp32", "bf16")),
        Param("calib_samples", int, 16, "calibration texts (encoders) or 128-token windows (causal LMs) for the "
              "search; each layer's sensitivity is ranked on 8 texts / 2 windows", min=2, max=4096),
        Param("calib_data", str, "builtin", "calibration text: builtin (end of the built-in text) or a .txt path"),
        Param("skip_head", bool, True, "leave the output head (lm_head / classifier) in full precision"),
    ),
    conflicts={"fp16": HALF, "bf16": HALF},
    exportable="custom",
    notes="per-tensor/per-channel use torch.ao's fbgemm kernels (CPU); torchao runs on CPU and CUDA (a bf16 model "
          "stays bf16 where layers are kept). Exports: torch.ao schemes in the optbench-int8-dynamic format, torchao "
          "in transformers' TorchAoConfig format. Memory: the search streams (a quantized twin exists only while "
          "its layer is quantized; on a GPU the originals of quantized layers wait in host memory, which needs up "
          "to the model's weight bytes of free RAM), so device memory stays near the model's own size.",
    cost=2.0,  # a sensitivity search: one calibration pass per layer
    quantizes_activations=True,
    weights=_storage,
)
def apply(model, params: dict, ctx) -> Applied:
    import time

    import torch

    from workbench.core.optimizations.calibration import overlap_note, token_batches
    from workbench.core.measure.memory import model_size_bytes, tensor_bytes
    from workbench.core.optimizations import _common
    from workbench.core.optimizations.context import linear_modules

    scheme = params["scheme"]
    dtype = next(model.parameters()).dtype
    if dtype != torch.float32 and not (scheme == "torchao" and dtype == torch.bfloat16):
        raise InputError(f"int8-selective:scheme={scheme}: the model is {str(dtype).replace('torch.', '')}; "
                         f"expected a float32 model (or bfloat16 with scheme=torchao)", param="opt")
    if scheme != "torchao" and ctx.device != "cpu":
        raise InputError(f"int8-selective:scheme={scheme}: torch.ao dynamic INT8 runs on CPU only; expected "
                         f"scheme=torchao on {ctx.device}", param="opt")
    if scheme == "torchao":
        from workbench.core.optimizations import _torchao

        _torchao.require("int8-selective")
    t0 = time.perf_counter()
    task = ctx.task
    n = params["calib_samples"]
    if task == "causal-lm":
        batches = token_batches(ctx.tokenizer, task, n_batches=max(1, n // 4), batch=min(4, n), seq_len=128,
                                source=params["calib_data"], device=ctx.device)
    else:
        batches = token_batches(ctx.tokenizer, task, n_batches=max(1, n // 8), batch=min(8, n), seq_len=128,
                                source=params["calib_data"], device=ctx.device)
    note = overlap_note(ctx.eval_settings, task)
    if note:
        ctx.log(f"int8-selective: {note}")
    refs = _common.reference(model, task, batches)
    targets = linear_modules(model, skip_head=params["skip_head"])
    if not targets:
        raise InputError("int8-selective: the model has no Linear layers to quantize", param="opt")
    originals = dict(targets)
    names = [nm for nm, _ in targets]
    linear_before = sum(tensor_bytes(m.weight) for m in originals.values())
    # Streamed: a quantized twin exists only while its layer is quantized, and on a GPU the original of a quantized
    # layer waits in host memory (a CPU snapshot) until the search keeps it again. Peak device memory is then the
    # model as configured plus one layer, not the model plus a quantized copy of every layer.
    offload = not ctx.device.startswith("cpu")
    quantized: dict = {}
    keepers: dict = {}

    def use_original(nm: str):
        m = originals[nm]
        if offload:
            m.to(ctx.device)
        return m

    def kept_version(nm: str):
        if params["keep_dtype"] != "bf16":
            return use_original(nm)
        if nm not in keepers:  # the bf16 twin stands for the original; the original itself can wait on the host
            keepers[nm] = _half_twin(use_original(nm), torch.bfloat16)
            if offload:
                originals[nm].to("cpu")
        return keepers[nm]

    def quantize_one(nm: str):
        if nm not in quantized:
            keepers.pop(nm, None)
            quantized[nm] = _quantized_copy(use_original(nm), scheme)
            if offload:
                originals[nm].to("cpu")
        return quantized[nm]

    def configure(kept: set[str]) -> None:
        for nm in names:  # first release what leaves, then build what enters (one layer in flight at a time)
            if nm in kept and nm in quantized:
                _common.set_module(model, nm, kept_version(nm))
                del quantized[nm]
        for nm in names:
            _common.set_module(model, nm, kept_version(nm) if nm in kept else quantize_one(nm))

    # ranking needs far less data than the final check: one forward per layer over 8 texts (encoders) or
    # 2 x 128 tokens (causal LMs, where a model has hundreds of Linear layers)
    rows = 2 if task == "causal-lm" else 8
    probe = [{k: v[:rows] for k, v in batches[0].items()}]
    probe_refs = _common.reference(model, task, probe)
    sensitivity = {}
    for i, nm in enumerate(names):
        twin = _quantized_copy(originals[nm], scheme)  # one twin alive at a time
        _common.set_module(model, nm, twin)
        sensitivity[nm] = _common.error_on(model, task, probe, probe_refs)
        _common.set_module(model, nm, originals[nm])
        del twin
        ctx.progress(0.8 * (i + 1) / len(names))
    order = sorted(names, key=lambda nm: sensitivity[nm], reverse=True)

    tolerance = (1.0 - params["min_cosine"]) if task == "encoder" else params["max_kl"]
    curve: dict[int, float] = {}

    def err_at(k: int) -> float:
        if k not in curve:
            configure(set(order[:k]))
            curve[k] = _common.error_on(model, task, batches, refs)
        return curve[k]

    if params["keep"] >= 0:
        k = min(params["keep"], len(order))
        err_at(k)
    else:
        lo, hi = 0, len(order)  # invariant: hi meets the target (all fp32: error 0)
        if err_at(0) <= tolerance:
            hi = 0
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if err_at(mid) <= tolerance:
                hi = mid
            else:
                lo = mid
        k = hi
        if k == len(order):
            ctx.log("int8-selective: the target needs every layer in fp32; nothing is quantized")
    kept = set(order[:k])
    configure(kept)
    calib_error = err_at(k)
    ctx.progress(1.0)
    done = [nm for nm in names if nm not in kept]
    linear_after = sum(tensor_bytes(originals[nm].weight) // (2 if params["keep_dtype"] == "bf16" else 1)
                       for nm in kept)
    for nm in done:
        q = quantized[nm]
        linear_after += (tensor_bytes(q.weight()) if callable(getattr(q, "weight", None)) else tensor_bytes(q.weight))
    for nm in done:  # the originals of quantized layers are no longer needed (nor is their host snapshot)
        originals.pop(nm, None)
    report = {
        "scheme": scheme,
        "layers": len(names),
        "layers_quantized": len(done),
        "kept_fp32": order[:k],  # kept out of int8 (in keep_dtype)
        "keep_dtype": params["keep_dtype"],
        "target": {"metric": _common.error_name(task), "tolerance": tolerance},
        "calibration_error": calib_error,
        "calibration_cosine": 1.0 - calib_error if task == "encoder" else None,
        "error_by_kept": {str(kk): v for kk, v in sorted(curve.items())},
        "sensitivity_top": [{"layer": nm, "error_alone": sensitivity[nm]} for nm in order[:12]],
        "sensitivity": sensitivity,
        "linear_bytes_before": linear_before,
        "linear_bytes_after": linear_after,
        "bytes_after": model_size_bytes(model),
        "calibration": {"source": params["calib_data"], "batches": len(batches),
                        "shape": list(batches[0]["input_ids"].shape)},
        "search_seconds": time.perf_counter() - t0,
    }
    if scheme == "torchao":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig

        from workbench.core.optimizations import _torchao

        report.update(_torchao.attach_export(model, Int8DynamicActivationInt8WeightConfig(), done) if done
                      else {"exportable": "yes"})
    else:
        report["exportable"] = "custom" if done else "yes"
    if params["keep_dtype"] == "bf16" and kept:
        report["exportable"] = "no"
        report["export_note"] = ("layers kept in bf16 between fp32 activations have no format that reloads as the "
                                 "same model; use keep_dtype=fp32 for an exportable artifact")
    ctx.log(f"int8-selective: {len(done)}/{len(names)} layers quantized ({scheme}), {k} kept fp32; calibration "
            f"{_common.error_name(task)} = {calib_error:.4g} (target <= {tolerance:.4g})")
    return Applied(model, report)
