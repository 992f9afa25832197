"""2:4 semi-structured sparsity (NVIDIA sparse tensor cores): in every group of 4 consecutive input weights of a
Linear row the 2 smallest are zeroed, then the weight is compressed with ``torch.sparse.to_sparse_semi_structured``
(values + metadata, about 56 % of the dense bytes for fp16/bf16) so matmuls run on sparse kernels (cuSPARSELt or
CUTLASS). GPU only (compute capability >= 8.0), fp16/bf16; speedups appear at larger batch x tokens (the PyTorch
tutorial sees them from batch 16). Without fine-tuning, 50 % magnitude sparsity costs accuracy: measured, reported.
"""

from __future__ import annotations

from workbench.core.errors import InputError
from workbench.core.optimizations.base import Applied, Param, register


def two_four_mask(weight):
    """Boolean mask keeping the 2 largest |w| of every group of 4 along the input dimension."""
    import torch

    out_f, in_f = weight.shape
    if in_f % 4:
        raise ValueError(f"input size {in_f} is not a multiple of 4")
    groups = weight.detach().abs().reshape(out_f, in_f // 4, 4)
    keep = groups.topk(2, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(out_f, in_f)


def is_two_four(weight) -> bool:
    w = weight.detach().reshape(weight.shape[0], -1, 4)
    return bool(((w != 0).sum(-1) <= 2).all())


@register(
    name="sparse-2of4", family="pruning", stage="quantize", exclusive_group="weight-quantization",
    tp_reason=("it replaces weights with semi-structured sparse tensors, which DTensor cannot shard"),
    summary="2:4 semi-structured sparsity on sparse tensor cores (to_sparse_semi_structured; GPU, fp16/bf16).",
    params=(
        Param("skip_head", bool, True, "leave the output head dense"),
        Param("min_features", int, 128, "leave layers with fewer input or output features dense (kernel tile "
              "minimums)", min=16, max=1_000_000),
    ),
    devices=("cuda",),
    exportable="no",
    export_reason="its compressed tensors have no safetensors form; re-apply it after loading",
    notes="Applies after precision (it needs fp16/bf16 weights; fp32 models are cast to bf16 first). The compressed "
          "tensors have no safetensors form: not exportable (re-apply after loading).",
)
def apply(model, params: dict, ctx) -> Applied:
    import torch

    from workbench.core.measure.memory import model_size_bytes, tensor_bytes
    from workbench.core.optimizations.context import linear_modules

    if not ctx.device.startswith("cuda"):
        raise InputError("sparse-2of4: needs a CUDA GPU (sparse tensor cores); on CPU use prune-l1 (no "
                         "speedup) or prune-heads / prune-ffn (real speedup)", param="opt")
    cap = torch.cuda.get_device_capability(torch.device(ctx.device))
    if cap < (8, 0):
        raise InputError(f"sparse-2of4: compute capability {cap[0]}.{cap[1]}; expected >= 8.0 (Ampere or newer)",
                         param="opt")
    from torch.sparse import to_sparse_semi_structured

    report = {}
    if next(model.parameters()).dtype not in (torch.float16, torch.bfloat16):
        ctx.log("sparse-2of4: casting the model to bfloat16 (semi-structured kernels take fp16/bf16)")
        from workbench.core.optimizations._common import cast

        cast(model, torch.bfloat16)
        report["cast_to"] = "bfloat16"
    before = model_size_bytes(model)
    done, skipped, zeros, total = [], [], 0, 0
    dense_bytes = sparse_bytes = 0
    for name, lin in linear_modules(model, skip_head=params["skip_head"]):
        out_f, in_f = lin.weight.shape
        if min(out_f, in_f) < params["min_features"] or in_f % 64 or out_f % 32:
            skipped.append(name)
            continue
        with torch.no_grad():
            masked = lin.weight.detach() * two_four_mask(lin.weight)
        zeros += int((masked == 0).sum())
        total += masked.numel()
        try:
            sparse = to_sparse_semi_structured(masked.contiguous())
        except (RuntimeError, ValueError) as exc:
            skipped.append(f"{name} ({str(exc).splitlines()[0][:80]})")
            continue
        dense_bytes += tensor_bytes(lin.weight)
        lin.weight = torch.nn.Parameter(sparse, requires_grad=False)
        sparse_bytes += tensor_bytes(lin.weight)
        done.append(name)
    if not done:
        raise InputError(f"sparse-2of4: no Linear layer has a supported shape (skipped {len(skipped)})", param="opt")
    ctx.log(f"sparse-2of4: {len(done)} layers compressed, {len(skipped)} left dense")
    report.update({"layers_sparse": len(done), "layers_dense": skipped, "measured_sparsity": zeros / total,
                   "weights_in_sparse_layers": total, "dense_bytes": dense_bytes, "compressed_bytes": sparse_bytes,
                   "bytes_before": before, "bytes_after": model_size_bytes(model),
                   "backend": "cutlass" if getattr(torch.sparse.SparseSemiStructuredTensor, "_FORCE_CUTLASS", False)
                   else "default (cuSPARSELt when available)"})
    return Applied(model, report)
