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
        Param("fusion", str, "default", "inductor's fusion switches for the step: combo (independent small "
              "kernels in one launch), aggressive (fuse nodes that share no memory traffic), or both; fewer launches "
              "per step at batch 1 (not yet timed on a GPU)",
              choices=("default", "combo", "aggressive", "combo+aggressive")),
        Param("pdl", bool, False, "programmatic dependent launch (H100/H200): each Triton kernel of the step may "
              "start while the previous one finishes, waiting only where it reads that kernel's output; cuts the "
              "gaps between a batch-1 step's ~200 launches (not yet timed on a GPU)"),
        Param("gemv", bool, False, "batch-1 decode: compute each Linear as a fused Triton reduction instead of "
              "cuBLAS (see core/optimizations/fastgen.py)"),
        Param("matmul", str, "inductor", "inductor: torch.compile's choice (with tuning=coordinate-descent it "
              "rewrites batch-1 matmuls as Triton reductions); extern: every plain Linear stays a library call "
              "(cuBLAS on a GPU) that inductor cannot rewrite, the rest of the step still compiled and tuned; on "
              "an H100 slower at batch 1 (Llama-1B fused 1.48 vs 1.25 ms/token, 8B 7.09 vs 6.06: "
              "benchmarks/results/h100_2026-12-07c)",
              choices=("inductor", "extern")),
        Param("fuse", bool, False, "Llama-family layers: one q/k/v and one gate/up projection (row views of one "
              "weight, no extra memory) and grouped-query decode attention without expanding K/V: fewer kernels "
              "per step"),
        Param("verify_attention", str, "sdpa", "with fuse=true, the attention of a speculative verify round "
              "(2-16 positions): sdpa (transformers' kernel choice — on an H100 a cuDNN kernel twice as slow as the "
              "one-token step's) or decomposed (grouped-query matmuls and an fp32 softmax that inductor fuses, as "
              "fuse does for one position; not yet timed on a GPU)", choices=("sdpa", "decomposed")),
        Param("decode_kernel", str, "inductor", "with fuse=true, the one-token attention: inductor (compiled from "
              "grouped-query ops: three kernels a layer) or triton (optbench's split-K kernels, two a layer: read "
              "the static cache in place, skip the rows the mask hides; checked against sdpa in Triton's "
              "interpreter, not yet timed on a GPU)", choices=("inductor", "triton")),
        Param("max_len", int, 0, "static cache length; 0 = prompt + new tokens of the benchmark", min=0,
              max=131072),
    ),
    exportable="yes",
    notes="Changes how tokens are generated, not the weights: the export is the model itself. Greedy only.",
    cost=1.0,  # one compile of the decode step, cheaper than a whole-forward compile
)
def apply(model, params: dict, ctx) -> Applied:
    from workbench.core.errors import InputError
    from workbench.core.optimizations.fastgen import GraphedGreedy

    from workbench.core.optimizations.quant_torchao import refuse_int8_dynamic_act_compile

    mode = params["mode"]
    if mode != "eager":
        refuse_int8_dynamic_act_compile(model, ctx, "graph-decode")
    if mode != "eager" and not ctx.device.startswith("cuda"):
        ctx.log("graph-decode: CUDA graphs need a GPU; on CPU the loop runs eagerly")
        mode = "eager"

    if params["verify_attention"] != "sdpa" and not params["fuse"]:
        raise InputError(f"graph-decode:verify_attention={params['verify_attention']}: the decomposed attention "
                         "comes with fuse; expected fuse=true as well", param="opt")
    if params["decode_kernel"] != "inductor" and not params["fuse"]:
        raise InputError(f"graph-decode:decode_kernel={params['decode_kernel']}: the kernel replaces fuse's decode "
                         "attention; expected fuse=true as well", param="opt")
    if params["gemv"] and params["matmul"] == "extern":
        raise InputError("graph-decode: gemv=true computes each Linear as a Triton reduction and matmul=extern as a "
                         "library call; expected one of them", param="opt")
    kw = {"mode": mode, "compile_mode": params["compile_mode"], "log": ctx.log, "tuning": params["tuning"],
          "gemv": params["gemv"], "fuse": params["fuse"], "verify_attention": params["verify_attention"],
          "matmul": params["matmul"], "fusion": params["fusion"], "pdl": params["pdl"],
          "decode_kernel": params["decode_kernel"]}
    report = {"mode": mode, "compile_mode": params["compile_mode"], "tuning": params["tuning"], "gemv": params["gemv"],
              "fuse": params["fuse"], "verify_attention": params["verify_attention"], "matmul": params["matmul"],
              "fusion": params["fusion"], "pdl": params["pdl"], "decode_kernel": params["decode_kernel"],
              "max_len": params["max_len"]}
    lookup = ctx.extra["generate_kwargs"].get("optbench_speculative")
    if lookup is not None:  # speculative (any method) before this step: drafts verified here
        factory = _lookup_factory(model, params, ctx, lookup, kw)
        method = lookup["method"]
        report["speculative"] = {
            "method": method, "num_tokens": lookup["num_tokens"],
            "ngram": lookup["ngram"] if method != "draft" else None,
            "gate": lookup.get("gate") if method != "draft-head" else None,
            "loop": "graph-decode verify step (" + {"draft": "spec_draft.py", "draft-head": "spec_head.py"}.get(
                method, "spec_lookup.py") + ")"}
        if method == "draft":
            report["speculative"]["note"] = ("the draft proposes num_tokens every round: schedule and confidence "
                                              "are transformers' loop's and do not apply")
    else:
        def factory(batch: int, max_len: int):
            return GraphedGreedy(model, batch, params["max_len"] or max_len, **kw)

    ctx.extra["generate_kwargs"]["optbench_generator"] = factory
    return Applied(model, report)


def _lookup_factory(model, params: dict, ctx, lookup: dict, kw: dict):
    """The benchmark's generator: one ``LookupGreedy`` (or its draft-head / draft-model subclass), checked against
    plain greedy decoding on its first use (the check's result replaces the speculative report's, which checked
    transformers' own loop)."""
    from workbench.core.errors import InputError
    from workbench.core.optimizations import speculative
    from workbench.core.optimizations.spec_lookup import CostGate, LookupGreedy

    made: dict = {}

    def factory(batch: int, max_len: int):
        if batch != 1:
            raise InputError(f"speculative + graph-decode: runs one sequence at a time; expected batch 1, not "
                             f"{batch}", param="opt")
        want = max(params["max_len"] or max_len, speculative.CHECK_PROMPT + speculative.CHECK_NEW)
        if "gen" not in made or made["gen"].max_len < want + lookup["num_tokens"]:
            gate = CostGate() if lookup.get("gate", "auto") == "auto" else None
            if lookup["method"] == "draft-head":
                from workbench.core.optimizations.spec_head import head_greedy_class

                made["gen"] = head_greedy_class()(model, 1, want, lookup["head"], lookup["num_tokens"],
                                                  stats=lookup["stats"], lookup=lookup.get("lookup", 0),
                                                  ngram=lookup["ngram"], **kw)
            elif lookup["method"] == "draft":
                from workbench.core.optimizations.spec_draft import DraftGreedy

                made["gen"] = DraftGreedy(model, lookup["draft"], 1, want, lookup["num_tokens"],
                                          stats=lookup["stats"], gate=gate,
                                          draft_compile=lookup.get("draft_compile", False), **kw)
            else:
                made["gen"] = LookupGreedy(model, 1, want, lookup["num_tokens"], lookup["ngram"],
                                           stats=lookup["stats"], gate=gate, **kw)
        if "check" not in made:
            made["check"] = check = speculative.check_against_greedy(made["gen"], model, ctx.tokenizer, ctx.device)
            shown = lookup["report"]["greedy_check"]  # in place: the step's report was handed on at apply time
            shown.clear()
            shown.update({**check, "loop": "graph-decode"})
            if not check["identical"]:
                ctx.warning(f"speculative + graph-decode: output differs from plain greedy decoding at token "
                            f"{check['first_difference']} of {check['tokens']} (a near-tie the verify step rounds "
                            f"differently)")
            lookup["stats"].reset()
        return made["gen"]

    return factory
