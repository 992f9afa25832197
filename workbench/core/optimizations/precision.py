"""Half-precision inference: cast the whole model to fp16 or bf16, or run it under autocast.

``mode=cast`` halves every weight (half the bytes). ``mode=autocast`` keeps the fp32 weights and runs the forward
under ``torch.autocast``: matmuls and convolutions in half precision, while the ops autocast keeps in fp32
(softmax, layer/RMS norm, log-softmax, reductions) stay fp32 islands — for models that overflow or lose accuracy
when cast whole. Autocast saves no memory for weights and is a runtime setting, so it exports nothing new.
"""

from __future__ import annotations

from workbench.core.errors import InputError
from workbench.core.optimizations.base import Applied, Param, register

MODE = Param("mode", str, "cast", "cast: convert weights and activations; autocast: fp32 weights, half-precision "
             "matmuls with fp32 islands (softmax, norms)", choices=("cast", "autocast"), search=("cast", "autocast"))


def _cast(model, ctx, dtype_name: str) -> dict:
    import torch

    from workbench.core.measure.memory import model_size_bytes

    dtype = getattr(torch, dtype_name)
    before = model_size_bytes(model)
    warning = None
    if ctx.device == "cpu" and dtype_name == "float16":
        ctx.log("fp16 on CPU: many CPU kernels have no fast fp16 path; expect it to be slower than fp32")
    elif ctx.device == "cpu":
        from workbench.core.measure.cpu import precision_warning

        warning = precision_warning(["bf16"], "cpu")
        if warning:
            ctx.warning(warning)
    from workbench.core.optimizations._common import cast

    cast(model, dtype)
    report = {"dtype": dtype_name, "mode": "cast", "bytes_before": before, "bytes_after": model_size_bytes(model)}
    return {**report, "warning": warning} if warning else report


def _autocast(model, ctx, dtype_name: str, name: str) -> dict:
    import functools

    import torch

    from workbench.core.measure.memory import model_size_bytes

    dtype = getattr(torch, dtype_name)
    if next(model.parameters()).dtype != torch.float32:
        raise InputError(f"{name}:mode=autocast: the model is {next(model.parameters()).dtype}; expected "
                         f"float32 weights (autocast computes in half precision from fp32 weights)", param="opt")
    device_type = "cuda" if ctx.device.startswith("cuda") else "cpu"
    inner = model.forward

    @functools.wraps(inner)
    def forward(*args, **kwargs):
        with torch.autocast(device_type, dtype=dtype):
            return inner(*args, **kwargs)

    model.forward = forward  # instance attribute: nn.Module.__call__ and generate() both go through it
    model._optbench_autocast = dtype_name
    size = model_size_bytes(model)
    return {"dtype": dtype_name, "mode": "autocast", "device_type": device_type, "bytes_before": size,
            "bytes_after": size, "exportable": "no",
            "export_note": "autocast is a runtime setting over unchanged fp32 weights: export the base model and run "
                           "it under torch.autocast"}


def _model_reason(name: str, dtype_name: str):
    """tune's skip rule (OptSpec.model_reason): a cast to the dtype the model already has changes nothing, and
    autocast needs fp32 weights (``_autocast`` refuses anything else)."""
    def reason(params: dict, model: dict) -> str | None:
        dtype = model.get("dtype")
        if params.get("mode", "cast") == "autocast":
            if dtype not in (None, "float32"):
                return f"{name}:mode=autocast needs float32 weights; the model is {dtype}"
        elif dtype == dtype_name:
            return f"{name}:mode=cast changes nothing: the model is already {dtype}"
        return None
    return reason


@register(name="fp16", family="precision", stage="precision", exclusive_group="precision", params=(MODE,),
          tp_ok=True,
          precision="fp16", model_reason=_model_reason("fp16", "float16"),
          summary="float16 inference: cast weights and activations (half the bytes), or autocast with fp32 islands.",
          notes="On CPU, fp16 matmuls are often slower than fp32. mode=autocast keeps fp32 weights (no size change) "
                "and is not exportable (a runtime setting).")
def apply_fp16(model, params: dict, ctx) -> Applied:
    if params.get("mode") == "autocast":
        return Applied(model, _autocast(model, ctx, "float16", "fp16"))
    return Applied(model, _cast(model, ctx, "float16"))


@register(name="bf16", family="precision", stage="precision", exclusive_group="precision", params=(MODE,),
          tp_ok=True,
          precision="bf16", model_reason=_model_reason("bf16", "bfloat16"),
          summary="bfloat16 inference: cast (half the bytes, fp32's range), or autocast with fp32 islands.",
          notes="mode=autocast keeps fp32 weights (no size change) and is not exportable (a runtime setting).")
def apply_bf16(model, params: dict, ctx) -> Applied:
    if params.get("mode") == "autocast":
        return Applied(model, _autocast(model, ctx, "bfloat16", "bf16"))
    return Applied(model, _cast(model, ctx, "bfloat16"))
