"""Unstructured magnitude (L1) pruning of Linear weights, made permanent; the measured sparsity is reported."""

from __future__ import annotations

from workbench.core.optimizations.base import Applied, Param, register


def measured_sparsity(modules) -> dict:
    zeros = total = 0
    per_layer = {}
    for name, m in modules:
        z = int((m.weight == 0).sum())
        n = m.weight.numel()
        per_layer[name] = z / n
        zeros += z
        total += n
    return {"overall": zeros / total if total else 0.0, "per_layer": per_layer, "zeros": zeros, "weights": total}


@register(
    name="prune-l1", family="pruning", stage="prune",
    tp_reason=("it writes zeros into the weights in place, which DTensor refuses for a sharded weight (in-place "
               "index_put_ on Shard(0))"),
    summary="Unstructured L1 magnitude pruning of Linear weights (zeros; no speedup on dense kernels).",
    params=(
        Param("sparsity", float, 0.5, "fraction of weights set to zero", min=0.0, max=0.99,
              search=(0.1, 0.3, 0.5)),
        Param("scope", str, "layer", "layer: the same fraction in every layer; global: smallest weights model-wide",
              choices=("layer", "global")),
        Param("skip_head", bool, True, "leave the output head (lm_head / classifier) dense"),
    ),
    notes="Dense kernels do the same work on zeros: expect no speedup, only a compressible artifact.",
)
def apply(model, params: dict, ctx) -> Applied:
    import torch
    from torch.nn.utils import prune

    from workbench.core.optimizations.context import linear_modules

    targets = linear_modules(model, skip_head=params["skip_head"])
    amount = params["sparsity"]
    with torch.no_grad():
        if params["scope"] == "global":
            prune.global_unstructured([(m, "weight") for _, m in targets], pruning_method=prune.L1Unstructured,
                                      amount=amount)
        else:
            for _, m in targets:
                prune.l1_unstructured(m, "weight", amount=amount)
        for _, m in targets:
            prune.remove(m, "weight")  # permanent: the mask is folded into the weight
    sparsity = measured_sparsity(targets)
    ctx.log(f"prune-l1: asked {amount:.3f}, measured {sparsity['overall']:.4f} over {len(targets)} layers")
    report = {"requested_sparsity": amount, "measured_sparsity": sparsity["overall"],
              "per_layer_sparsity": sparsity["per_layer"], "layers": len(targets),
              "weights_zeroed": sparsity["zeros"]}
    return Applied(model, report)
