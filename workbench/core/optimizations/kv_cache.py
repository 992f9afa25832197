"""KV cache for generation: transformers' dynamic cache (grows each step) or a static cache (preallocated to a
maximum length, fixed addresses — what CUDA graphs and torch.compile need).

transformers compiles the model's forward by itself when generate() runs with a static cache on a GPU
(``generation_config.compile_config``, mode reduce-overhead). That compile lands in the benchmark's warm-up and is
reported as cold start. ``auto_compile=false`` turns it off. Combined with ``compile``, the compile step sets
transformers' compile config instead of wrapping ``model.forward`` a second time: the nested
``torch.compile(mode="reduce-overhead")`` is what crashed with "accessing tensor output of CUDAGraphs that has been
overwritten" (see compile.py).
"""

from __future__ import annotations

from workbench.core.optimizations.base import Applied, Param, register


@register(
    name="kv-cache", tp_ok=True, family="runtime", stage="runtime", tasks=("causal-lm",),
    summary="Generation KV cache: dynamic (grows per token) or static (preallocated max length; transformers "
            "compiles the decode step itself on GPUs).",
    params=(
        Param("cache", str, "static", "dynamic | static", choices=("dynamic", "static"), search=("dynamic", "static")),
        Param("max_len", int, 0, "static: cache length in tokens (0: prompt + new tokens of each call; a larger value "
              "lets calls of different lengths share one cache)", min=0, max=1_048_576),
        Param("auto_compile", bool, True, "static on a GPU: let transformers compile the decode forward "
              "(false: plain eager decode with a static cache)"),
    ),
    conflicts={"graph-decode": "graph-decode brings its own static cache and decode loop"},
    notes="On CPU transformers does not compile, and a static cache makes every decode step attend over the whole "
          "preallocated length: expect it to be slower than the dynamic cache unless combined with compile.",
)
def apply(model, params: dict, ctx) -> Applied:
    gk = ctx.extra["generate_kwargs"]
    report = {"cache": params["cache"]}
    if params["cache"] == "dynamic":
        for k in ("cache_implementation", "max_cache_len", "disable_compile"):
            gk.pop(k, None)
        return Applied(model, {**report, "note": "transformers' default dynamic cache"})
    gk["cache_implementation"] = "static"
    if params["max_len"]:
        from transformers import GenerationConfig

        if hasattr(GenerationConfig(), "max_cache_len"):
            gk["max_cache_len"] = params["max_len"]
            report["max_len"] = params["max_len"]
        else:
            ctx.log("kv-cache: this transformers sizes the static cache per call; max_len is ignored")
            report["max_len"] = None
    if not params["auto_compile"]:
        gk["disable_compile"] = True
    gpu = ctx.device.startswith("cuda")
    report["transformers_compiles_forward"] = bool(gpu and params["auto_compile"])
    if not gpu:
        ctx.log("kv-cache: static cache on CPU runs eagerly (no auto-compile); expect slower decode than dynamic")
    return Applied(model, report)
