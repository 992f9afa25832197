"""torch.compile of the model's forward (modes default / reduce-overhead / max-autotune).

Compilation happens at the first call: the benchmark's warm-up absorbs it and reports it as ``cold_start_ms``, never
inside steady-state latency. Three cases need care:
- causal LM with a static KV cache (the ``kv-cache`` optimization): transformers already compiles the forward inside
  generate(). Wrapping ``model.forward`` in another ``torch.compile(mode="reduce-overhead")`` nests two CUDA-graph
  compiles and crashed ("accessing tensor output of CUDAGraphs that has been overwritten": generate keeps the cache
  and logits of step t while the replay of step t+1 reuses their memory). So this step hands its settings to
  transformers' own compile (``generation_config.compile_config``) and compiles once. On CPU it also tells
  transformers to compile there (it does not by default).
- causal LM with the dynamic cache: the cache grows every token, so CUDA-graph modes would record a graph per
  length and hand out overwritten cache tensors; reduce-overhead falls back to default and max-autotune to
  max-autotune-no-cudagraphs (reported). Use kv-cache:cache=static for CUDA graphs.
- encoders/classifiers on CUDA with a CUDA-graph mode: each call starts a new cudagraph step
  (``torch.compiler.cudagraph_mark_step_begin``), so outputs are valid until the next call (the benchmark and the
  evaluation consume them before calling again).
On CPU, CUDA-graph modes have no graphs to capture; inductor still compiles.
"""

from __future__ import annotations

from workbench.core.optimizations.base import Applied, Param, register

CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


@register(
    name="compile", tp_ok=True, family="compile", stage="compile",
    summary="torch.compile the forward (default / reduce-overhead / max-autotune); compile time is reported as cold "
            "start, outside steady-state latency.",
    params=(
        Param("mode", str, "default", "default | reduce-overhead (CUDA graphs) | max-autotune | "
              "max-autotune-no-cudagraphs", choices=("default", "reduce-overhead", "max-autotune",
                                                     "max-autotune-no-cudagraphs"),
              search=("default", "reduce-overhead")),
        Param("fullgraph", bool, False, "fail instead of splitting the graph at unsupported code"),
        Param("dynamic", str, "auto", "auto: let torch decide; true: compile for dynamic shapes from the start; "
              "false: specialise on every shape", choices=("auto", "true", "false")),
        Param("backend", str, "inductor", "inductor (generates kernels); aot_eager or eager (checking only)",
              choices=("inductor", "aot_eager", "eager")),
    ),
    conflicts={"graph-decode": "graph-decode compiles and graphs its own decode step; early-exit branches on data "
                               "after every block, which would break the compiled graph at every check"},
    exportable="yes",
    notes="The export is the uncompiled model (compilation is a runtime step). Needs a C++ compiler on CPU. "
          "Under HF generate's growing cache the forward recompiles for new shapes: on a Llama-3.1-8B-shaped model "
          "on an H200 one run (baseline, compile, benchmark, eval) had not finished after 250 s; for decoding "
          "use graph-decode (one compile, 155 s for that whole run with coordinate-descent tuning).",
)
def apply(model, params: dict, ctx) -> Applied:
    import functools

    import torch

    from workbench.core.optimizations.quant_torchao import refuse_int8_dynamic_act_compile

    refuse_int8_dynamic_act_compile(model, ctx, "compile")
    if not ctx.device.startswith("cuda"):
        from workbench.core.measure.cpu import align_inductor_with_caps

        align_inductor_with_caps()
    mode = params["mode"]
    dynamic = {"auto": None, "true": True, "false": False}[params["dynamic"]]
    gpu = ctx.device.startswith("cuda")
    gk = ctx.extra.get("generate_kwargs", {})
    report = {"mode": mode, "backend": params["backend"], "fullgraph": params["fullgraph"],
              "dynamic": params["dynamic"], "compiled_at": "first call (see cold_start_ms)"}
    if ctx.task == "causal-lm" and gk.get("cache_implementation") == "static":
        from transformers import CompileConfig

        cc = CompileConfig(fullgraph=params["fullgraph"], dynamic=dynamic, backend=params["backend"],
                           mode=mode)
        if not gpu:
            cc._compile_all_devices = True  # transformers only auto-compiles on accelerators otherwise
        model.generation_config.compile_config = cc
        gk.pop("disable_compile", None)
        ctx.log(f"compile: static KV cache in use — one compile through transformers' compile_config (mode {mode}), "
                f"not a second torch.compile around forward")
        report = {**report, "strategy": "transformers compile_config (static cache)", "mode_used": mode,
                  "what": "the decode forward inside generate(); prefill runs eagerly"}
        return Applied(model, report)
    used = mode
    note = None
    if ctx.task == "causal-lm" and mode in CUDAGRAPH_MODES and gpu:
        used = "default" if mode == "reduce-overhead" else "max-autotune-no-cudagraphs"
        note = (f"{mode} needs fixed shapes and fixed cache addresses; with the dynamic cache it would hand out "
                f"overwritten CUDA-graph outputs. Compiled with {used}; add kv-cache:cache=static for "
                f"CUDA graphs")
        ctx.log(f"compile: {note}")
    elif mode in CUDAGRAPH_MODES and not gpu:
        note = "no CUDA graphs on CPU: inductor compiles without them"
    if params["backend"] != "inductor" and used != "default":
        note, used = f"mode {used} applies to inductor only; backend {params['backend']} ignores it", "default"
    compiled = torch.compile(model.forward, mode=None if used == "default" else used,
                             fullgraph=params["fullgraph"], dynamic=dynamic, backend=params["backend"])
    if gpu and used in CUDAGRAPH_MODES:
        @functools.wraps(model.forward)
        def forward(*args, **kwargs):
            torch.compiler.cudagraph_mark_step_begin()
            return compiled(*args, **kwargs)
    else:
        forward = compiled
    model.forward = forward  # instance attribute: __call__ and generate() use it; the weights are untouched
    report = {**report, "strategy": "torch.compile(model.forward)", "mode_used": used,
              **({"note": note} if note else {})}
    return Applied(model, report)
