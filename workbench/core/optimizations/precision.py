"""Half-precision inference: cast the whole model to fp16 or bf16."""

from __future__ import annotations

from workbench.core.optimizations.base import register


def _cast(model, ctx, dtype_name: str) -> dict:
    import torch

    from workbench.core.measure.memory import model_size_bytes

    dtype = getattr(torch, dtype_name)
    before = model_size_bytes(model)
    if ctx.device == "cpu" and dtype_name == "float16":
        ctx.log("fp16 on CPU: many CPU kernels have no fast fp16 path; expect it to be slower than fp32")
    model.to(dtype)
    return {"dtype": dtype_name, "bytes_before": before, "bytes_after": model_size_bytes(model)}


@register(name="fp16", family="precision", stage="precision", exclusive_group="precision",
          summary="Cast weights and activations to float16 (half the bytes; fastest on GPUs).",
          notes="On CPU, fp16 matmuls are often slower than fp32.")
def apply_fp16(model, params: dict, ctx) -> dict:
    return _cast(model, ctx, "float16")


@register(name="bf16", family="precision", stage="precision", exclusive_group="precision",
          summary="Cast weights and activations to bfloat16 (half the bytes, fp32's range).")
def apply_bf16(model, params: dict, ctx) -> dict:
    return _cast(model, ctx, "bfloat16")
