"""A runtime for causal-LM decoding: static KV cache + the decode step as one CUDA graph (see fastgen.py)."""

from __future__ import annotations

from workbench.core.optimizations.base import Applied, Param, register


@register(
    name="graph-decode", family="runtime", stage="compile", tasks=("causal-lm",),
    tp_reason=("its CUDA graph would capture a step with NCCL all-reduces inside, and fuse=true concatenates "
               "weights that are DTensor shards; neither is verified (mode=eager ran under tp 2 on CPU; "
               "kv-cache:cache=static with compile is the alternative verified on CPU)"),
    summary="Greedy decode loop with a static KV cache and the whole step replayed as one CUDA graph "
            "(what closes the launch- and host-bound gap at small batch).",
    params=(
        Param("mode", str, "graph", "graph: compile the step, capture it in one CUDA graph (fastest); "
              "reduce-overhead: torch.compile's own CUDA graphs; eager: no compile, no graph (CPU, checking)",
              choices=("graph", "reduce-overhead", "eager"), search=("graph",)),
        Param("compile_mode", str, "default", "torch.compile mode for the step in 'graph' mode",
              choices=("default", "max-autotune-no-cudagraphs")),
        Param("tuning", str, "none", "coordinate-descent: inductor tunes its kernels' block sizes (longer compile)",
              choices=("none", "coordinate-descent")),
        Param("gemv", bool, False, "batch-1 decode: compute each Linear as a fused Triton reduction instead of "
              "cuBLAS (see core/optimizations/fastgen.py)"),
        Param("fuse", bool, False, "Llama-family layers: one q/k/v and one gate/up projection (row views of one "
              "weight, no extra memory) and grouped-query decode attention without expanding K/V: fewer kernels "
              "per step"),
        Param("max_len", int, 0, "static cache length; 0 = prompt + new tokens of the benchmark", min=0,
              max=131072),
    ),
    exportable="yes",
    notes="Changes how tokens are generated, not the weights: the export is the model itself. Greedy only.",
    cost=1.0,  # one compile of the decode step, cheaper than a whole-forward compile
)
def apply(model, params: dict, ctx) -> Applied:
    from workbench.core.optimizations.fastgen import GraphedGreedy

    from workbench.core.optimizations.quant_torchao import refuse_int8_dynamic_act_compile

    mode = params["mode"]
    if mode != "eager":
        refuse_int8_dynamic_act_compile(model, ctx, "graph-decode")
    if mode != "eager" and not ctx.device.startswith("cuda"):
        ctx.log("graph-decode: CUDA graphs need a GPU; on CPU the loop runs eagerly")
        mode = "eager"

    def factory(batch: int, max_len: int):
        return GraphedGreedy(model, batch, params["max_len"] or max_len, mode=mode,
                             compile_mode=params["compile_mode"], log=ctx.log, tuning=params["tuning"],
                             gemv=params["gemv"], fuse=params["fuse"])

    ctx.extra["generate_kwargs"]["optbench_generator"] = factory
    report = {"mode": mode, "compile_mode": params["compile_mode"], "tuning": params["tuning"], "gemv": params["gemv"],
              "fuse": params["fuse"], "max_len": params["max_len"]}
    return Applied(model, report)
