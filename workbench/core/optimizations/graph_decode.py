"""A runtime for causal-LM decoding: static KV cache + the decode step as one CUDA graph (see core/fastgen.py)."""

from __future__ import annotations

from workbench.core.optimizations.base import Param, register


@register(
    name="graph-decode", family="runtime", stage="compile", tasks=("causal-lm",),
    summary="Greedy decode loop with a static KV cache and the whole step replayed as a CUDA graph "
            "(what closes the launch-bound gap at batch 1).",
    params=(
        Param("compile_mode", str, "reduce-overhead", "torch.compile mode of the decode step; 'none' runs it "
              "eagerly (for checking tokens on CPU)", choices=("reduce-overhead", "max-autotune", "default", "none")),
        Param("max_len", int, 0, "static cache length; 0 = prompt + new tokens of the benchmark", min=0,
              max=131072),
    ),
    exportable="yes",
    notes="Changes how tokens are generated, not the weights: the export is the model itself. Greedy only.",
)
def apply(model, params: dict, ctx) -> dict:
    from workbench.core.fastgen import GraphedGreedy

    mode = None if params["compile_mode"] == "none" else params["compile_mode"]
    if mode and not ctx.device.startswith("cuda"):
        ctx.log("graph-decode: CUDA graphs need a GPU; on CPU the loop runs eagerly")
        mode = None

    def factory(batch: int, max_len: int):
        return GraphedGreedy(model, batch, params["max_len"] or max_len, compile_mode=mode)

    ctx.extra["generate_kwargs"]["optbench_generator"] = factory
    return {"compile_mode": mode or "none", "max_len": params["max_len"]}
