"""Attention implementation: eager (plain PyTorch ops), sdpa (torch's fused scaled_dot_product_attention) or
flash_attention_2 (the flash-attn package; CUDA, fp16/bf16)."""

from __future__ import annotations

from workbench.core.errors import InputError
from workbench.core.optimizations.base import Applied, Param, register


@register(
    name="attention", tp_ok=True, family="runtime", stage="runtime",
    summary="Choose the attention kernel: eager, sdpa (fused, default in transformers) or flash_attention_2.",
    params=(Param("impl", str, "sdpa", "eager | sdpa | flash_attention_2 (needs the flash-attn package, a CUDA GPU "
                  "and fp16/bf16 weights)", choices=("eager", "sdpa", "flash_attention_2"),
                  search=("eager", "sdpa")),),
    notes="Changes no weights; the export records the implementation in config.json.",
)
def apply(model, params: dict, ctx) -> Applied:
    import importlib.util

    import torch

    impl = params["impl"]
    before = getattr(model.config, "_attn_implementation", None)
    if impl == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            raise InputError("attention:impl=flash_attention_2: the flash-attn package is not installed; "
                             "expected `pip install flash-attn` on a CUDA machine, or impl=sdpa", param="opt")
        if not ctx.device.startswith("cuda"):
            raise InputError("attention:impl=flash_attention_2: needs a CUDA GPU; expected impl=sdpa on CPU",
                             param="opt")
        if next(model.parameters()).dtype not in (torch.float16, torch.bfloat16):
            raise InputError("attention:impl=flash_attention_2: the model is float32; expected bf16 or "
                             "fp16 before it", param="opt")
    try:
        model.set_attn_implementation(impl)
    except (ValueError, ImportError) as exc:
        raise InputError(f"attention:impl={impl}: {str(exc).splitlines()[0][:300]}", param="opt") from None
    after = getattr(model.config, "_attn_implementation", None)
    if after != impl:
        raise InputError(f"attention:impl={impl}: {type(model).__name__} kept {after!r}; this model does not "
                         f"support switching its attention implementation", param="opt")
    ctx.log(f"attention: {before} -> {after}")
    return Applied(model, {"before": before, "after": after})
