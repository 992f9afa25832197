"""Weight quantization with torchao: int8 weight-only, int8 dynamic activation + int8 weight, int4 weight-only
(group size), float8 weight-only and float8 dynamic activation + float8 weight.

Exports go through transformers' ``TorchAoConfig`` path (safetensors + torchao metadata) for every tensor type
torchao can serialize; a reload needs torchao. What runs where (torchao 0.18):
- int8-weight-only, int8-dynamic-act, fp8-weight-only: CPU and CUDA (on CPU the fp8/int8 weight-only matmuls
  dequantize on the fly: smaller, rarely faster).
- int4-weight-only: its own module (``quant_int4``: the rtn / hqq / awq / gptq algorithms).
- fp8-dynamic: CUDA with compute capability >= 8.9 (Ada, Hopper) — float8 tensor-core matmuls.
"""

from __future__ import annotations

from workbench.core.errors import InputError
from workbench.core.optimizations import _batch_notes
from workbench.core.optimizations._gemlite import WHY_NOT_EXPORTABLE as GEMLITE_NOT_EXPORTABLE
from workbench.core.optimizations.base import Applied, Param, WeightStorage, register

SKIP_HEAD = Param("skip_head", bool, True, "leave the output head (lm_head / classifier) in full precision")
EXPORTS = ("torchao", "compressed-tensors")  # export formats of a weight quantization (core/export_ct.py)
EXPORT = Param("export", str, "torchao", "export format: torchao (TorchAoConfig safetensors, reloads with torchao) or "
               "compressed-tensors (W8A16 pack-quantized, the format vLLM serves; reloads in transformers with "
               "the compressed-tensors package)", choices=EXPORTS)
COMMON = dict(family="quantization", stage="quantize", exclusive_group="weight-quantization", requires=("torchao",),
              conflicts={"fp16": "torchao quantization works from fp32 or bf16 weights; drop the fp16 cast"},
              # measured on CPU, torchao 0.18, transformers 5.24 (int8/fp8 weight-only, int8-dynamic-act; int4 and
              # fp8-dynamic take the same quantize_ path on CUDA and were not run)
              tp_reason="torchao replaces each weight with a quantized tensor that is not a DTensor, and the split "
                        "layers' matmuls then fail (aten.mm got mixed torch.Tensor and DTensor)")


def quantize_linears(model, params: dict, ctx, opt: str, make_config, need_bf16: bool = False) -> dict:
    """Quantize the model's Linear layers (the head as ``params["skip_head"]`` says) with the torchao config
    ``make_config()`` makes; the report: layers done / skipped, bytes before and after, export facts."""
    import torch

    from workbench.core.measure.memory import model_size_bytes, tensor_bytes
    from workbench.core.optimizations import _torchao
    from workbench.core.optimizations.context import linear_modules

    _torchao.require(opt)
    dtype = next(model.parameters()).dtype
    if dtype == torch.float16:
        raise InputError(f"{opt}: the model is float16; expected float32 or bfloat16 weights", param="opt")
    report: dict = {}
    if need_bf16 and dtype != torch.bfloat16:
        ctx.log(f"{opt}: casting the model to bfloat16 first (the kernel takes bf16 activations)")
        from workbench.core.optimizations._common import cast

        cast(model, torch.bfloat16)
        report["cast_to"] = "bfloat16"
    targets = linear_modules(model, skip_head=params["skip_head"])
    names = {n for n, _ in targets}
    before = model_size_bytes(model)
    linear_before = sum(tensor_bytes(m.weight) for _, m in targets)
    config = make_config()
    done = _torchao.quantize(model, config, names)
    if not done:
        raise InputError(f"{opt}: no Linear layer could be quantized (shapes not supported); expected "
                         f"layers whose input size is a multiple of the group size", param="opt")
    skipped = sorted(names - set(done))
    if skipped:
        ctx.log(f"{opt}: {len(skipped)} layer(s) left in full precision (unsupported shape): {skipped[:3]}")
    modules = dict(model.named_modules())
    report.update({
        "config": type(config).__name__,
        "layers_quantized": len(done),
        "layers_skipped": skipped,
        "linear_bytes_before": linear_before,
        "linear_bytes_after": sum(tensor_bytes(modules[n].weight) for n in names),
        "bytes_before": before,
        "bytes_after": model_size_bytes(model),
    })
    report.update(_torchao.attach_export(model, config, done))
    return report


@register(name="int8-weight-only", summary="torchao int8 weight-only: int8 per-channel weights, activations stay "
          "in float (halves/quarters weight bytes; helps memory-bound decode).",
          params=(SKIP_HEAD, EXPORT,
                  Param("kernel", str, "torchao", "CUDA kernel: torchao (its int8 weight-only matmul; exports; on an "
                        "H200 under graph-decode 1B 1.08x bf16 at batch 1, 0.05x at batch 8) or "
                        "gemlite (GemLite's Triton int8 kernel, q/k/v and gate/up packed as one kernel each; on an "
                        "H200 under graph-decode: 8B 1.38x bf16 at batch 1 and 1.28x at batch 8; 1B 1.29x at batch "
                        "1, 0.81x at batch 8; not exportable)",
                        choices=("torchao", "gemlite"), search_cuda=("torchao", "gemlite"),
                        search_needs=(("gemlite", "gemlite"),))),
          weights=WeightStorage("int8-weight-only", 1.0, bytes_per_row=4),
          unexportable_params={"kernel": {"gemlite": GEMLITE_NOT_EXPORTABLE}}, **COMMON)
def apply_int8_wo(model, params: dict, ctx) -> Applied:
    def make():
        from torchao.quantization import Int8WeightOnlyConfig

        return Int8WeightOnlyConfig()

    from workbench.core import export_ct

    if params["kernel"] == "gemlite":
        import torch

        from workbench.core.optimizations import _gemlite

        if params["export"] == "compressed-tensors":
            raise InputError("int8-weight-only:export=compressed-tensors: the export holds torchao's int8 layout, "
                             "not GemLite's; expected kernel=torchao (the default)", param="opt")
        _gemlite.check("int8-weight-only", ctx.device)
        dtype = next(model.parameters()).dtype
        if dtype not in (torch.bfloat16, torch.float16):
            ctx.log("int8-weight-only: casting the model to bfloat16 first (GemLite takes 16-bit activations)")
            from workbench.core.optimizations._common import cast

            cast(model, torch.bfloat16)
        rep = _gemlite.quantize(model, params, "int8", None, _gemlite.int8_codes)
        if dtype != next(model.parameters()).dtype:
            rep["cast_to"] = "bfloat16"
        rep["kernel"] = "gemlite"
        return Applied(model, rep)
    export_ct.require("int8-weight-only", params)
    size = _batch_notes.n_params(model)
    rep = quantize_linears(model, params, ctx, "int8-weight-only", make)
    rep["kernel"] = "torchao"
    rep.update(_batch_notes.note("int8-weight-only", "torchao", size, ctx.device))
    return Applied(model, export_ct.mark(rep, params))


# torchao's int8 x int8 matmul, compiled, is torch._int_mm, which needs more than 16 rows on CUDA (see
# refuse_int8_dynamic_act_compile, the backstop when the device was "auto" at validation)
INT_MM_REASON = ("compiled int8 x int8 matmuls are torch._int_mm, which needs more than 16 rows per matmul (decode "
                 "and pooler matmuls have fewer); use int8-weight-only with it")
INT_MM_CUDA_CONFLICTS = {"compile": INT_MM_REASON, "graph-decode": INT_MM_REASON}


@register(name="int8-dynamic-act", summary="torchao int8 dynamic activation (per token) + int8 weight (per "
          "channel): integer matmuls, CPU and CUDA.",
          params=(SKIP_HEAD,),
          notes="The torchao counterpart of int8-dynamic (torch.ao): per-token activation scales keep more "
                "accuracy than torch.ao's per-tensor ones. Slow at batch-1 decode (memory-bound).",
          quantizes_activations=True, weights=WeightStorage("int8-dynamic-act", 1.0, bytes_per_row=4),
          cuda_conflicts=INT_MM_CUDA_CONFLICTS, **COMMON)
def apply_int8_da(model, params: dict, ctx) -> Applied:
    def make():
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig

        return Int8DynamicActivationInt8WeightConfig()

    report = quantize_linears(model, params, ctx, "int8-dynamic-act", make)
    model._optbench_int8_dynamic_act = True  # see refuse_int8_dynamic_act_compile
    return Applied(model, report)


def refuse_int8_dynamic_act_compile(model, ctx, opt: str) -> None:
    """Measured on an H200 (torch 2.11, torchao 0.18): under torch.compile, torchao's int8 x int8 matmul is lowered
    to ``torch._int_mm``, which needs more than 16 rows, and fails on demo:minilm's pooler (one row per sequence)
    with "self.size(0) needs to be greater than 16" — as decode at batch <= 16 would. Eager int8-dynamic-act has a
    fallback for small shapes; compiled it has none. Say so before compiling instead of crashing in the benchmark."""
    if ctx.device.startswith("cuda") and getattr(model, "_optbench_int8_dynamic_act", False):
        raise InputError(f"{opt}: int8-dynamic-act cannot be compiled on CUDA (torch._int_mm needs more than "
                         f"16 rows per matmul; pooler and decode matmuls have fewer); expected int8-dynamic-act "
                         f"without {opt}, or int8-weight-only with {opt}", param="opt")


@register(name="fp8-weight-only", summary="torchao float8 (e4m3) weight-only: 1-byte weights, dequantized per "
          "matmul.", params=(SKIP_HEAD,),
          notes="Runs on CPU (dequantizing; expect no speedup) and CUDA.",
          weights=WeightStorage("fp8-weight-only", 1.0, bytes_per_row=4), **COMMON)
def apply_fp8_wo(model, params: dict, ctx) -> Applied:
    def make():
        from torchao.quantization import Float8WeightOnlyConfig

        return Float8WeightOnlyConfig()

    size = _batch_notes.n_params(model)
    rep = quantize_linears(model, params, ctx, "fp8-weight-only", make)
    return Applied(model, {**rep, **_batch_notes.note("fp8-weight-only", None, size, ctx.device)})


@register(name="fp8-dynamic", summary="torchao float8 dynamic activation + float8 weight, per-row scales "
          "(float8 tensor cores; CUDA compute capability >= 8.9).",
          params=(Param("granularity", str, "row", "scale granularity: row (per-row, more accurate) or tensor",
                        choices=("row", "tensor")), SKIP_HEAD),
          devices=("cuda",), notes="Casts the model to bf16 first. Pays where matmuls are compute-bound (prefill, "
          "large batches): at batch-1 decode of a Llama-3.1-8B shape on an H200 it ran at 0.92x the best bf16 step "
          "(the per-token activation quantization costs more than the weight bytes saved).",
          quantizes_activations=True,
          weights=WeightStorage("fp8-dynamic", 1.0, bytes_per_row=4, float_bytes=2.0), **COMMON)
def apply_fp8_dyn(model, params: dict, ctx) -> Applied:
    import torch

    if not ctx.device.startswith("cuda"):
        raise InputError("fp8-dynamic: needs a CUDA GPU; expected device cuda", param="opt")
    cap = torch.cuda.get_device_capability(torch.device(ctx.device))
    if cap < (8, 9):
        raise InputError(f"fp8-dynamic: this GPU has compute capability {cap[0]}.{cap[1]}; expected >= 8.9 "
                         f"(Ada or Hopper) for float8 matmuls; use int8-weight-only or int4-weight-only",
                         param="opt")

    def make():
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor

        gran = PerRow() if params["granularity"] == "row" else PerTensor()
        return Float8DynamicActivationFloat8WeightConfig(granularity=gran)

    size = _batch_notes.n_params(model)
    rep = quantize_linears(model, params, ctx, "fp8-dynamic", make, need_bf16=True)
    rep["granularity"] = params["granularity"]
    rep.update(_batch_notes.note("fp8-dynamic", None, size, ctx.device))
    return Applied(model, rep)
