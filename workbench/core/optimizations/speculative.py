"""Speculative decoding: a cheap drafter proposes tokens, the model checks them all in one forward pass.

Greedy acceptance keeps the output the model's own: a drafted token stands only where it equals the model's argmax,
and every verify pass adds the model's own next token, so each target forward yields 1 + (accepted drafts) tokens.
The loop is transformers' assisted generation (``generate(assistant_model=...)`` / ``prompt_lookup_num_tokens``);
this module chooses and builds the drafter, hands the loop to the benchmark through the ``optbench_generator``
hook (as graph-decode does) and measures what speculation did:

- ``method=draft``: a smaller causal LM with the same vocabulary drafts ``num_tokens`` tokens per round. It is given
  by reference (``draft=demo:NAME``, a folder, a hub id) or built here from the model's own blocks
  (``draft=layers``: ``draft_layers`` evenly spread blocks, optionally distilled on the built-in text for
  ``distill_steps`` steps / ``distill_seconds`` — the catalogue's distill machinery).
- ``method=prompt-lookup``: no second model; n-grams of the text so far (prompt included) that match its last
  ``ngram`` tokens propose what followed them (summaries, code edits, extraction: output that repeats the input).

Reported per run (accumulated over the benchmark's timed calls): tokens produced, target forwards (verify rounds),
tokens per target forward, drafts proposed and accepted, acceptance rate, and the greedy check — the speculative
output against plain greedy decoding of the same prompt, token for token. Decode tokens/s come from the tokens
actually produced: the benchmark stamps each token when the loop hands it out (a transformers streamer), so
several accepted tokens share one stamp. Batch 1 only (transformers' assisted generation is single-sequence).
"""

from __future__ import annotations

from workbench.core.errors import InputError
from workbench.core.optimizations._spec_student import CHAT_WINDOW  # draft=layers: its training windows
from workbench.core.optimizations.base import Applied, Param, register

METHODS = ("draft", "prompt-lookup", "draft-head")
HEAD_SEQ = 192  # method=draft-head: training windows (built-in text, and the model's own chat replies)
CHECK_PROMPT, CHECK_NEW = 64, 48  # the greedy check: built-in text tokens in, tokens out
SCHEDULES = ("constant", "heuristic_transient", "heuristic")


@register(
    name="speculative", family="runtime", stage="runtime", tasks=("causal-lm",),
    tp_reason=("its draft model and lookup loop run in one process beside the target; on a tp 2 CPU run it "
               "failed (copy_() on an invalid python storage)"),
    summary="Speculative decoding (greedy, batch 1): a drafter proposes tokens — a small model with the same "
            "vocabulary, a head trained on the model's own hidden states, or n-grams from the prompt — and one forward of the model verifies them; the output is "
            "the model's own, token for token.",
    params=(
        Param("method", str, "draft", "draft: a smaller model drafts; prompt-lookup: n-grams of the prompt "
              "propose (no second model; pays off where the output repeats the input); draft-head: a small head "
              "trained here on the model's own last hidden states drafts from them (EAGLE/Hydra-style; "
              "core/optimizations/spec_head.py; Llama-family models)", choices=METHODS,
              search=("draft", "prompt-lookup")),
        Param("draft", str, "layers", "method=draft: layers (a student made of this model's own blocks, built "
              "here), self (the model's own weights, with draft_dtype=int8 on a CPU: no training; "
              "core/optimizations/_draft_int8.py) or a model reference with the same tokenizer (demo:NAME, a "
              "folder, a hub id)"),
        Param("draft_layers", int, 0, "draft=layers: blocks kept in the student (0: a quarter, at least 1)",
              min=0, max=4096),
        Param("distill_steps", int, 0, "draft=layers: distillation steps (on the model's chat replies and the "
              "built-in text, see draft_chats) before drafting (0: the raw block subset); method=draft-head: "
              "training steps (0: until distill_seconds)", min=0, max=1_000_000),
        Param("distill_seconds", float, 600.0, "draft=layers and method=draft-head: wall-time cap on the "
              "distillation / the head's training", min=1.0, max=1e6),
        Param("head_tokens", int, 98304, "method=draft-head: built-in text tokens whose features the head trains "
              "on (one forward of the model over them first)", min=HEAD_SEQ, max=10_000_000),
        Param("head_chats", int, 96, "method=draft-head: chat turns (instructions over built-in passages) the model "
              "answers first, 128 tokens each, whose features the head also trains on (what it drafts at run time "
              "is a reply; 0: the built-in text only)", min=0, max=100_000),
        Param("draft_chats", int, -1, "draft=layers with distill_steps > 0: chat turns (instructions over built-in "
              "passages, or its own requests: draft_prompts) the model answers first, 128 tokens each (224 for its own "
              "short requests); the draft distils on them — prompt and reply, "
              f"{CHAT_WINDOW}-token windows — alternately with the built-in text (what it drafts at run time is a "
              "reply; 0: the built-in text only; -1: auto, 2048 on a GPU — answered 128 at a time — and 96 on a "
              "CPU)", min=-1, max=100_000),
        Param("draft_prompts", str, "passages", "draft=layers with draft_chats: the chat turns the model answers — "
              "passages (instructions over built-in passages, Python's reference: measured), self (requests the model "
              "writes itself from its chat template, Magpie-style: general-domain, like what users ask), or mixed "
              "(half each)", choices=("passages", "self", "mixed")),
        Param("draft_batch", int, 0, "draft=layers with draft_chats: training windows per distillation step (0: "
              "auto — on a GPU as many as keep one step's logits near 2 GB, 32 for a 49 k vocabulary, and 1 on a "
              "CPU). On a GPU a step of one window is launch-bound: a batch sees many times the tokens in the "
              "same seconds, and a draft that sees few windows many times memorises them", min=0, max=4096),
        Param("draft_dtype", str, "auto", "precision the draft runs in: auto (bf16 where the CPU has native bf16 "
              "matmuls or on a GPU, else the model's), fp32, bf16, model (the model's own), or int8 (CPU, "
              "method=draft: every Linear of the draft as int8 weights, a quarter of fp32's bytes); a draft only "
              "proposes, so its rounding costs acceptance, never correctness",
              choices=("auto", "model", "fp32", "bf16", "int8")),
        Param("draft_vocab", int, 0, "method=draft: tokens the draft can propose (0: the whole vocabulary; N: "
              "the N most frequent — the built-in text's tokens by count, then the lowest ids, which a BPE "
              "tokenizer gives its earliest merges). The draft's LM head shrinks to N rows (FR-Spec): on a small "
              "model the head is most of a draft's cost; a token outside the N is never drafted, only verified",
              min=0, max=10_000_000),
        Param("num_tokens", int, 0, "tokens drafted per round (0: 4 for a draft model, 10 for prompt lookup)",
              min=0, max=64),
        Param("schedule", str, "constant", "method=draft: constant number of drafts per round, or transformers' "
              "heuristic (grow after a fully accepted round, shrink otherwise; _transient resets per call)",
              choices=SCHEDULES),
        Param("confidence", float, 0.4, "method=draft: the draft stops a round early when its own probability for "
              "the next token is below this (transformers' assistant_confidence_threshold; 0: always draft "
              "num_tokens)", min=0.0, max=1.0),
        Param("ngram", int, 3, "method=prompt-lookup (and draft-head with lookup): longest n-gram matched "
              "against the text so far", min=1, max=32),
        Param("gate", str, "auto", "method=prompt-lookup or draft inside graph-decode's loop: auto drafts and "
              "verifies in a round only where that pays on this machine (the seconds a drafting round and a "
              "one-token step took, and the tokens a round gave — for lookup per length of the match — measured "
              "in the loop), else runs a one-token step; off drafts and verifies every round",
              choices=("auto", "off")),
        Param("draft_compile", bool, False, "method=draft inside graph-decode's loop on a CPU: compile the draft's "
              "one-token step with inductor (C++; about a minute on the first call on 2 cores). AVX2 EPYC: the "
              "int8 self-draft's step 28 -> 21 ms (a CUDA draft step is compiled and captured anyway)"),
        Param("lookup", int, 0, "method=draft-head: where the text's last N..ngram tokens occurred earlier, draft "
              "what followed them (prompt lookup) instead of the head — a head without attention cannot copy from "
              "the context; N is the shortest match taken (0: the head always drafts)", min=0, max=32),
    ),
    # with graph-decode every method runs inside its loop (static caches, captured steps): spec_lookup.py,
    # spec_head.py, spec_draft.py
    conflicts={"compile": "speculative runs transformers' assisted-generation loop; compile recompiles the decode "
                          "step it calls (with graph-decode, the verify step is compiled and captured)"},
    exportable="yes",
    notes="Changes how tokens are generated, not the weights: the export is the model itself (a built draft is "
          "not exported). Batch 1. The gain depends on the workload: prompt lookup pays where the output repeats "
          "the prompt (the benchmark's built-in prompt, Python reference text, is one such case; measure on your "
          "prompts with benchmarks/speculative.py), a draft pays when it agrees with the model (distill it). "
          "With graph-decode on a GPU a verify round costs more than a decode step (H200, demo:smollm2 fp32: "
          "about 6.2-6.5 against 2.1-2.5 ms; in fp32 its matmuls miss the tensor cores — use bf16); gate=auto "
          "runs a one-token step instead where the measured round costs say the drafts do not pay (H200, 128 "
          "tokens: open question 1.72x graph-decode against 1.37x with gate=off, code edit 1.37x against 1.27x). "
          "A distilled draft trains on the model's own chat replies (draft_chats). method=draft with "
          "graph-decode runs both models on static caches with captured steps (spec_draft.py). Memory: the "
          "model plus the draft (a draft of a quarter of the blocks shares nothing with the model, so it adds "
          "about a quarter of the block weights plus embeddings and head). On a CPU the model's own weights as an int8 "
          "draft with its step compiled (draft=self,draft_dtype=int8,draft_compile=true, with onednn-linear and "
          "graph-decode) ran 1.36-1.53x graph-decode on demo:smollm2 (AVX2 EPYC, 2 threads), output identical.",
    extra={"max_batch": 1},
)
def apply(model, params: dict, ctx) -> Applied:
    import time

    from workbench.core.measure.memory import model_size_bytes, param_count

    t0 = time.perf_counter()
    method = params["method"]
    report: dict = {"method": method}
    if params["draft_dtype"] == "int8":  # before any distillation or training is spent
        if method != "draft":
            raise InputError(f"speculative:method={method},draft_dtype=int8: an int8 draft is a draft model's; "
                             "expected method=draft", param="opt")
        from workbench.core.optimizations._draft_int8 import check_device

        check_device(ctx.device)
    draft = None
    fp32_note = fp32_verify_note(model, ctx.device)
    if fp32_note:
        report["fp32_verify_note"] = fp32_note
        ctx.warning(fp32_note)
    if method == "draft":
        draft, built = _draft_model(model, params, ctx)
        report.update(built)
        if params["draft_vocab"]:
            report["draft_vocab"] = shrink_head(draft, params["draft_vocab"], ctx.tokenizer)
        report["draft_dtype"] = _draft_precision(draft, model, params["draft_dtype"], ctx.device)
        report["draft_params"] = param_count(draft)
        report["draft_bytes"] = model_size_bytes(draft)
        report["draft_cost_ratio"] = report["draft_bytes"] / max(1, model_size_bytes(model))
    if method == "draft-head":
        return _apply_head(model, params, ctx, report, t0)
    num = params["num_tokens"] or (4 if method == "draft" else 10)
    report.update({"num_tokens": num, "schedule": params["schedule"] if method == "draft" else None,
                   "confidence": params["confidence"] if method == "draft" else None,
                   "ngram": params["ngram"] if method == "prompt-lookup" else None})
    stats = _Stats()
    gen = SpeculativeGreedy(model, draft, method, num, params["schedule"], params["ngram"], ctx.tokenizer, stats,
                            confidence=params["confidence"])
    report["greedy_check"] = gen.check_against_greedy(ctx.device)
    if not report["greedy_check"]["identical"]:
        ctx.warning(f"speculative: output differs from plain greedy decoding at token "
                    f"{report['greedy_check']['first_difference']} of {report['greedy_check']['tokens']} "
                    f"(a near-tie the verify pass rounds differently)")
    stats.reset()

    def factory(batch: int, max_len: int):
        if batch != 1:
            raise InputError(f"speculative: runs one sequence at a time; expected batch 1, not {batch}",
                             param="opt")
        return gen

    ctx.extra["generate_kwargs"]["optbench_generator"] = factory
    # graph-decode, applied after this, runs the lookup or the draft inside its own loop
    ctx.extra["generate_kwargs"]["optbench_speculative"] = {
        "method": method, "num_tokens": num, "ngram": params["ngram"], "gate": params["gate"], "stats": stats,
        "report": report, "draft": draft, "draft_compile": params["draft_compile"]}
    report["setup_seconds"] = time.perf_counter() - t0
    report["stats"] = stats.live  # the same dict: the benchmark's calls fill it in before the report is written
    return Applied(model, report)


def _apply_head(model, params: dict, ctx, report: dict, t0: float) -> Applied:
    """method=draft-head: train the head (spec_head), then decode with it in graph-decode's verify-step loop —
    graph-decode's own (CUDA graphs) when it follows in the recipe, else the same loop run eagerly."""
    import time

    import torch

    from workbench.core.optimizations import spec_head
    from workbench.core.optimizations.calibration import token_batches

    from workbench.core.optimizations.calibration import calibration_text

    num = params["num_tokens"] or 3
    text_tokens = len(ctx.tokenizer(calibration_text(), add_special_tokens=False, verbose=False)["input_ids"])
    # no window twice: the last two, held out, are text the head never trained on
    n = max(1, min(params["head_tokens"], text_tokens - 2 * HEAD_SEQ) // HEAD_SEQ)
    ctx.log(f"speculative: the model's features over {n * HEAD_SEQ} built-in tokens (one forward)")
    spec_head._parts(model)  # a Llama-family model, or the reason, before the forward pass
    windows = token_batches(ctx.tokenizer, "causal-lm", n + 2, 1, HEAD_SEQ, device=ctx.device)
    if params["head_chats"]:
        tc = time.perf_counter()
        chats = spec_head.chat_windows(model, ctx.tokenizer, params["head_chats"], HEAD_SEQ, 128, ctx.device)
        ctx.log(f"speculative: the model answered {len(chats)} chat turns in {time.perf_counter() - tc:.0f} s")
        held = max(1, len(chats) // 16)  # held out with the text's last two windows
        windows = windows[:n] + chats[held:] + windows[n:] + chats[:held]
        n += len(chats) - held
    f, y, x = spec_head.features(model, windows)
    vocab = model.get_output_embeddings().weight.shape[0]
    keep = min(vocab, params["draft_vocab"] or 8192)
    counts = torch.bincount(y[:n].flatten(), minlength=vocab).float()
    counts[frequent_tokens(ctx.tokenizer, keep, vocab)] += 0.5  # ties and unseen tokens: the text's, then low ids
    head = spec_head.build(model, counts.argsort(descending=True)[:keep].sort().values)
    trained = spec_head.train(head, f[:n], y[:n], x[:n], seconds=params["distill_seconds"],
                              steps=params["distill_steps"] or 10**9, log=ctx.log)
    agree = spec_head.agreement(head, f[n:], y[n:], x[n:], depth=num)
    # the head runs in draft_dtype (auto: bf16 where the CPU has native bf16 matmuls, or on a GPU): at batch 1 a
    # draft step reads the head's weights once, so its bytes are its cost (the agreement above is fp32's)
    report["draft_dtype"] = _draft_precision(head, model, params["draft_dtype"], ctx.device)
    ctx.log(f"speculative: draft head trained {trained['steps']} steps in {trained['seconds']:.0f} s; held-out "
            f"agreement per draft {', '.join(f'{a:.2f}' for a in agree)}")
    from workbench.core.measure.memory import model_size_bytes

    report.update({"num_tokens": num, "draft_vocab": keep, "head_training": trained,
                   "held_out_agreement": [round(a, 4) for a in agree], "draft_params":
                   sum(p.numel() for p in head.parameters()), "draft_bytes": model_size_bytes(head),
                   "features_tokens": int(f[:n].shape[0] * f.shape[1])})
    report["draft_cost_ratio"] = report["draft_bytes"] / max(1, model_size_bytes(model))
    del f, y, x
    stats = _Stats()
    HeadGreedy = spec_head.head_greedy_class()
    made: dict = {}

    def factory(batch: int, max_len: int):
        if batch != 1:
            raise InputError(f"speculative: runs one sequence at a time; expected batch 1, not {batch}",
                             param="opt")
        want = max(max_len, CHECK_PROMPT + CHECK_NEW)
        if "gen" not in made or made["gen"].max_len < want + num:
            made["gen"] = HeadGreedy(model, 1, want, head, num, stats=stats, mode="eager",
                                     lookup=params["lookup"], ngram=params["ngram"])
        return made["gen"]

    report["greedy_check"] = check_against_greedy(factory(1, 0), model, ctx.tokenizer, ctx.device)
    if not report["greedy_check"]["identical"]:
        ctx.warning(f"speculative: output differs from plain greedy decoding at token "
                    f"{report['greedy_check']['first_difference']} of {report['greedy_check']['tokens']} "
                    f"(a near-tie the verify step rounds differently)")
    stats.reset()
    ctx.extra["generate_kwargs"]["optbench_generator"] = factory
    # graph-decode, applied after this, runs the head inside its own (captured) loop
    ctx.extra["generate_kwargs"]["optbench_speculative"] = {"method": "draft-head", "num_tokens": num,
                                                            "ngram": params["ngram"], "lookup": params["lookup"],
                                                            "stats": stats, "report": report, "head": head}
    report["setup_seconds"] = time.perf_counter() - t0
    report["stats"] = stats.live
    return Applied(model, report)


def _draft_model(model, params: dict, ctx):
    """(draft model on the model's device, report fields)."""
    ref = params["draft"].strip()
    if ref == "self":
        from workbench.core.optimizations import _draft_int8

        if params["draft_dtype"] != "int8":
            raise InputError(f"speculative:draft=self,draft_dtype={params['draft_dtype']}: a copy of the model in a "
                             "float dtype costs about what the model does; expected draft_dtype=int8 (CPU)",
                             param="opt")
        ctx.log("speculative: the draft is the model's own weights (a copy, to be made int8)")
        return _draft_int8.self_draft(model), {"draft": "self", "draft_layers": len(_blocks_of(model))}
    if ref in ("", "layers"):
        from workbench.core.optimizations._spec_student import student

        return student(model, params, ctx)
    from workbench.core.models import load

    ctx.log(f"speculative: loading the draft model {ref}")
    try:
        loaded = load(ref, "causal-lm", ctx.device)
    except InputError as exc:
        raise InputError(f"speculative:draft={ref}: {exc.message}", param="opt") from None
    draft = loaded.model.eval()
    _same_vocabulary(model, draft, ctx.tokenizer, loaded.tokenizer, ref)
    return draft, {"draft": ref, "draft_layers": len(_blocks_of(draft))}


def _draft_precision(draft, model, choice: str, device: str) -> str:
    """Cast the draft as asked; returns the dtype it runs in."""
    import torch

    from workbench.core.optimizations._common import cast, float_dtype

    if choice == "int8":
        from workbench.core.optimizations import _draft_int8

        n = _draft_int8.quantize_draft(draft)  # (the device was checked when apply began)
        return f"int8 weights ({n} Linear layers), {str(float_dtype(draft)).replace('torch.', '')} elsewhere"
    if choice == "auto":
        from workbench.core.measure.cpu import describe

        fast_bf16 = device.startswith("cuda") or describe()["bf16_native"]
        want = torch.bfloat16 if fast_bf16 and float_dtype(model) == torch.float32 else float_dtype(model)
    else:
        want = {"model": float_dtype(model), "fp32": torch.float32, "bf16": torch.bfloat16}[choice]
    if float_dtype(draft) != want:
        cast(draft, want)
    return str(want).replace("torch.", "")


def frequent_tokens(tokenizer, n: int, vocab: int) -> list[int]:
    """The ``n`` token ids a draft keeps: the built-in text's tokens by count (ties: lower id), the tokenizer's
    special tokens, then the lowest ids not yet taken (BPE numbers its merges in the order it learned them)."""
    from collections import Counter

    from workbench.core.data import builtin_text

    counts = Counter(tokenizer(builtin_text())["input_ids"]) if tokenizer is not None else Counter()
    keep: list[int] = []
    seen: set[int] = set()

    def take(i: int) -> None:
        if 0 <= i < vocab and i not in seen and len(keep) < n:
            seen.add(i)
            keep.append(i)

    for i in getattr(tokenizer, "all_special_ids", None) or []:
        take(int(i))
    for i, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        take(int(i))
    i = 0
    while len(keep) < n and i < vocab:
        take(i)
        i += 1
    return sorted(keep)


def subset_head(head, keep: list[int], vocab: int):
    """A module giving logits over ``vocab`` from the ``keep`` rows of ``head`` (the rest: the dtype's minimum,
    so greedy never picks them). Built here so this file imports without torch."""
    import torch

    class SubsetHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = head.weight.detach()
            index = torch.tensor(keep, dtype=torch.long, device=w.device)
            self.weight = torch.nn.Parameter(w.index_select(0, index).clone(), requires_grad=False)
            bias = getattr(head, "bias", None)
            self.bias = None if bias is None else torch.nn.Parameter(
                bias.detach().index_select(0, index).clone(), requires_grad=False)
            self.register_buffer("index", index)
            self.vocab = vocab

        def forward(self, h):
            small = torch.nn.functional.linear(h, self.weight, self.bias)
            out = small.new_full((*small.shape[:-1], self.vocab), torch.finfo(small.dtype).min)
            return out.index_copy_(-1, self.index, small)

    return SubsetHead()


def shrink_head(draft, n: int, tokenizer) -> dict:
    """Replace the draft's LM head by its ``n`` most frequent rows (``frequent_tokens``); returns the report."""
    head = draft.get_output_embeddings()
    vocab = int(head.weight.shape[0])
    if n >= vocab:
        return {"kept": vocab, "of": vocab, "head_fraction": 1.0}
    keep = frequent_tokens(tokenizer, n, vocab)
    draft.set_output_embeddings(subset_head(head, keep, vocab))
    draft.config.tie_word_embeddings = False  # the shrunk head no longer shares the embedding's storage
    return {"kept": len(keep), "of": vocab, "head_fraction": round(len(keep) / vocab, 4)}


def _same_vocabulary(model, draft, tok, draft_tok, ref: str) -> None:
    a, b = model.get_output_embeddings(), draft.get_output_embeddings()
    if a is None or b is None or a.weight.shape[0] != b.weight.shape[0]:
        raise InputError(f"speculative:draft={ref}: its vocabulary differs from the model's; expected a "
                         f"draft model with the same tokenizer", param="opt")
    if draft_tok is not None and tok is not None and draft_tok.get_vocab() != tok.get_vocab():
        raise InputError(f"speculative:draft={ref}: its tokenizer differs from the model's; expected a draft "
                         f"model with the same tokenizer", param="opt")


def _blocks_of(model):
    from workbench.core.optimizations import _common

    return _common.blocks(model)


def fp32_verify_note(model, device: str) -> str | None:
    """On a GPU, an fp32 model's verify step (several positions) runs fp32 GEMMs on the CUDA cores, where its
    one-token step runs GEMV kernels: measured on an H200 (benchmarks/results/h200_2026-12-04/spec_diag_h200_open.json,
    demo:smollm2 fp32, graph-decode) an 11-position verify round took 4.38 ms of GPU kernel time against 1.86 ms for
    a one-token step, most of it in FFMA GEMM kernels. bf16 puts those matmuls on the tensor cores."""
    import torch

    if not str(device).startswith("cuda"):
        return None
    if next(model.parameters()).dtype != torch.float32:
        return None
    return ("speculative: the model is fp32 on CUDA, so each verify step's several-position matmuls run fp32 GEMMs "
            "without tensor cores (H200, demo:smollm2: an 11-position round cost 2.4x a one-token step in GPU "
            "time); add --opt bf16 for speculation that pays")


class _Stats:
    """What speculation did over the benchmark's calls."""

    def __init__(self) -> None:
        self.live: dict = {}
        self.reset()

    def reset(self) -> None:
        self.live.clear()
        self.live.update({"calls": 0, "tokens": 0, "target_forwards": 0, "proposed": 0})

    def add(self, tokens: int, rounds: int, proposed: int) -> None:
        s = self.live
        s["calls"] += 1
        s["tokens"] += tokens
        s["target_forwards"] += rounds
        s["proposed"] += proposed
        accepted = s["tokens"] - s["target_forwards"]  # each verify pass adds one token of the model's own
        s["accepted"] = accepted
        s["tokens_per_target_forward"] = s["tokens"] / s["target_forwards"] if s["target_forwards"] else None
        s["acceptance_rate"] = accepted / s["proposed"] if s["proposed"] else None


class _Stamper:
    """A transformers streamer: ``on_step`` once per token the loop hands out (the first put is the prompt)."""

    def __init__(self, on_step) -> None:
        self.on_step = on_step
        self.prompt_seen = False
        self.tokens = 0

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.on_step(int(value.numel()))
        self.tokens += int(value.numel())

    def end(self) -> None:
        pass


class SpeculativeGreedy:
    """``generate(ids, n_new, on_step)`` for the benchmark: transformers' assisted generation, counted."""

    def __init__(self, model, draft, method: str, num_tokens: int, schedule: str, ngram: int, tokenizer,
                 stats: _Stats, confidence: float = 0.4) -> None:
        self.model, self.draft, self.method, self.tokenizer = model, draft, method, tokenizer
        self.num_tokens, self.ngram, self.stats = num_tokens, ngram, stats
        self.pad_id = getattr(tokenizer, "pad_token_id", None)
        if self.pad_id is None:
            self.pad_id = getattr(tokenizer, "eos_token_id", None)
        if draft is not None:
            gc = draft.generation_config
            gc.num_assistant_tokens = num_tokens
            gc.num_assistant_tokens_schedule = schedule
            gc.assistant_confidence_threshold = confidence
        self._round = {"rounds": 0, "proposed": 0}
        self._wrap_candidates()

    def _wrap_candidates(self) -> None:
        """Count verify rounds and drafted tokens: wrap the candidate generator transformers builds per call."""
        model, counts = self.model, self._round
        original = getattr(model, "_get_candidate_generator", None)
        if original is None:
            return

        def counted_generator(*args, **kwargs):
            gen = original(*args, **kwargs)
            inner = gen.get_candidates

            def get_candidates(input_ids, *a, **k):
                cand, logits = inner(input_ids, *a, **k)
                counts["rounds"] += 1
                counts["proposed"] += int(cand.shape[1] - input_ids.shape[1])
                return cand, logits

            gen.get_candidates = get_candidates
            return gen

        model._get_candidate_generator = counted_generator

    def _kwargs(self, ids, n_new: int) -> dict:
        import torch

        kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "max_new_tokens": n_new,
              "min_new_tokens": n_new, "do_sample": False, "num_beams": 1, "pad_token_id": self.pad_id}
        if self.method == "draft":
            kw["assistant_model"] = self.draft
        else:
            kw["prompt_lookup_num_tokens"] = self.num_tokens
            kw["max_matching_ngram_size"] = self.ngram
        return kw

    def generate(self, ids, n_new: int, on_step=None):
        import torch

        if ids.shape[0] != 1:
            raise InputError(f"speculative: runs one sequence at a time; expected batch 1, not "
                             f"{ids.shape[0]}", param="opt")
        self._round.update(rounds=0, proposed=0)
        stamper = _Stamper(on_step or (lambda n=1: None))
        with torch.inference_mode():
            out = self.model.generate(streamer=stamper, **self._kwargs(ids, n_new))
        self.stats.add(int(out.shape[1] - ids.shape[1]), self._round["rounds"], self._round["proposed"])
        return out

    def check_against_greedy(self, device: str, prompt_tokens: int = CHECK_PROMPT, new_tokens: int = CHECK_NEW) -> dict:
        return check_against_greedy(self, self.model, self.tokenizer, device, prompt_tokens, new_tokens)


def check_against_greedy(gen, model, tokenizer, device: str, prompt_tokens: int = CHECK_PROMPT,
                         new_tokens: int = CHECK_NEW) -> dict:
    """``gen.generate`` vs plain greedy decoding of the built-in text's first tokens: identical, or where not."""
    import torch

    from workbench.core.measure.timing import fixed_input_ids

    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        pad_id = getattr(tokenizer, "eos_token_id", None)
    ids = fixed_input_ids(tokenizer, 1, prompt_tokens).to(device)
    with torch.inference_mode():
        plain = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, do_sample=False, num_beams=1, pad_token_id=pad_id)
    spec = gen.generate(ids, new_tokens)
    a, b = plain[0, ids.shape[1]:].tolist(), spec[0, ids.shape[1]:].tolist()
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    return {"identical": a == b, "tokens": len(a), "first_difference": first, "prompt_tokens": prompt_tokens}
