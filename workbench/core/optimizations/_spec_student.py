"""A speculative draft made of the model's own blocks (``speculative:draft=layers``), distilled on the model's own
chat replies: the data (``draft_chats`` turns answered by the model, ``draft_batch`` windows a step), the distillation
and the teacher-forced agreement it reaches on held-out replies. Registers nothing (speculative.py does)."""

from __future__ import annotations

from workbench.core.errors import InputError

CHAT_WINDOW = 256  # training windows over the model's chat replies (prompt end + 128-token reply)
REPLY = 128  # the reply part of a chat window (the model's own greedy tokens)


def student(model, params: dict, ctx):
    """A draft made of the model's own blocks (weights copied), optionally distilled. A bf16 / fp16 model's draft
    trains on fp32 master weights under autocast in the model's dtype (AdamW's steps of ~lr are below a bf16
    weight's resolution and would mostly vanish), then runs in the dtype ``draft_dtype`` picks."""
    import torch

    from workbench.core.optimizations import _common, distill

    n = len(_common.blocks(model))
    low = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(_common.float_dtype(model))
    k = params["draft_layers"] or max(1, n // 4)
    if k >= n:
        raise InputError(f"speculative:draft_layers={k}: the model has {n} blocks; expected fewer", param="opt")
    dparams = optimizations_params("distill", {"student": "layers", "keep": k, "steps": max(1, params["distill_steps"]),
                                               "time_budget_s": params["distill_seconds"], "checkpoint": "none",
                                               "batch": 2, "seq_len": 128,
                                               # a draft only needs to agree with the model's next token: match
                                               # its distribution (alpha 1, T 1), a little faster than distill's
                                               "alpha": 1.0, "temperature": 1.0, "lr": 3e-4,
                                               "precision": low or "fp32"})
    draft, mapping = distill.build_student(model, dparams, "causal-lm")
    report = {"draft": "layers", "draft_layers": k, "draft_blocks": mapping, "distill_steps": params["distill_steps"]}
    if params["distill_steps"] > 0:
        if low:
            _common.cast(draft, torch.float32)
            report["distill_precision"] = f"fp32 master weights, {low} autocast"
        batches = _chat_batches(model, params, ctx, report) if params["draft_chats"] else None
        held = batches[0] if batches else None
        if held is not None:
            report["heldout_agreement_before"] = reply_agreement(model, draft, held, low)
        ctx.log(f"speculative: distilling a {k}-block draft for {params['distill_steps']} steps "
                f"(at most {params['distill_seconds']:.0f} s)")
        result = distill.train(model, draft, mapping, "causal-lm", ctx.tokenizer, dparams, ctx.device, ctx.log,
                               lambda f, **kw: ctx.progress(0.9 * f, **kw), batches=batches)
        report["distill"] = {k2: v for k2, v in result.items() if not isinstance(v, list)}
        if held is not None:
            report["heldout_agreement_after"] = agree = reply_agreement(model, draft, held, low)
            ctx.log(f"speculative: the draft picks the model's next token on {100 * agree:.1f} % of held-out "
                    f"reply positions (before distilling: {100 * report['heldout_agreement_before']:.1f} %)")
    for p in draft.parameters():
        p.requires_grad_(False)
    return draft.eval(), report


def reply_agreement(model, draft, batch: dict, low: str | None) -> float:
    """Teacher-forced: the share of reply positions (each window's last ``REPLY`` tokens, the model's own greedy
    reply) where the draft's argmax equals the model's — what greedy acceptance rewards, read without a decode
    loop. In the model's precision (autocast where it is bf16 / fp16)."""
    import contextlib

    import torch

    ids = batch["input_ids"]
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(low or "")
    ctx = torch.autocast(ids.device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
    was = draft.training
    draft.eval()
    with torch.no_grad(), ctx:
        want = model(input_ids=ids).logits[:, -REPLY - 1:-1].argmax(-1)
        got = draft(input_ids=ids).logits[:, -REPLY - 1:-1].argmax(-1)
    draft.train(was)
    return round(float((want == got).float().mean()), 4)


def draft_batch_size(params: dict, model, device: str) -> int:
    """``draft_batch``, or auto: on a GPU the windows whose fp32 logits (student's and model's) stay near 2 GB
    (32 for a 49 k vocabulary, 16 for 128 k), elsewhere 1."""
    if params["draft_batch"]:
        return params["draft_batch"]
    if not str(device).startswith("cuda"):
        return 1
    vocab = int(model.get_output_embeddings().weight.shape[0])
    per_window = CHAT_WINDOW * vocab * 4
    fits = max(1, min(64, 2**31 // per_window))
    return 1 << (fits.bit_length() - 1)  # a power of two


def _chat_batches(model, params: dict, ctx, report: dict) -> list:
    """The draft's training inputs: the model's own greedy replies to ``draft_chats`` chat turns
    (``spec_head.chat_windows``: each window the end of a prompt and the model's reply — on-policy data, as
    DistillSpec finds best for a draft) — instructions over built-in passages, requests the model wrote itself
    (``spec_head.self_turns``), or half of each (``draft_prompts``) — alternating with windows of the built-in text,
    ``draft_batch`` windows a batch; the first two batches, held out, are one of each."""
    import time

    import torch

    from workbench.core.optimizations import spec_head
    from workbench.core.optimizations.calibration import token_batches

    t0 = time.perf_counter()
    wanted = params["draft_chats"]
    if wanted < 0:
        wanted = 2048 if str(ctx.device).startswith("cuda") else 96
    n_self = {"passages": 0, "self": wanted, "mixed": wanted // 2}[params["draft_prompts"]]
    tok = ctx.tokenizer
    on_passages = (spec_head.chat_windows(model, tok, wanted - n_self, CHAT_WINDOW, REPLY, ctx.device)
                   if wanted > n_self else [])
    turns = spec_head.self_turns(model, tok, n_self, ctx.device) if n_self else []
    # the model's own requests are short: a longer reply fills the window (at least 32 prompt tokens stay in it)
    on_own = spec_head.chat_windows(model, tok, len(turns), CHAT_WINDOW, CHAT_WINDOW - 32, ctx.device,
                                    turns=turns) if turns else []
    chats = [w for pair in zip(on_passages, on_own) for w in pair]  # every batch holds both kinds
    chats += on_passages[len(on_own):] + on_own[len(on_passages):]
    if not chats:
        raise InputError(f"speculative:draft_chats={wanted},draft_prompts={params['draft_prompts']}: no reply "
                         f"window of {CHAT_WINDOW} tokens without padding came out (the model's own requests need "
                         "a chat template); expected at least one (or draft_chats=0)", param="opt")
    seconds = time.perf_counter() - t0
    ctx.log(f"speculative: the model answered {len(chats)} chat turns for the draft in {seconds:.0f} s "
            f"({len(on_passages)} over built-in passages, {len(on_own)} of its own requests)")
    size = draft_batch_size(params, model, ctx.device)
    groups = max(1, len(chats) // size)  # whole batches; a batch of fewer windows when there are too few
    size = min(size, len(chats))
    text = token_batches(ctx.tokenizer, "causal-lm", groups + 1, size, CHAT_WINDOW, device=ctx.device)
    # (generate made them inference tensors: clones outside inference mode can enter autograd)
    rows = []
    for g in range(groups):
        ids = torch.cat([c["input_ids"] for c in chats[g * size:(g + 1) * size]]).clone()
        rows.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    mixed = [rows[-1], text[-1]]  # held out
    for chat, window in zip(rows[:-1], text[:-1]):
        mixed += [chat, window]
    report["distill_data"] = {"chat_turns": wanted, "prompts": params["draft_prompts"],
                              "passage_windows": len(on_passages), "own_request_windows": len(on_own),
                              "chat_windows": groups * size, "text_windows": groups * size - size,
                              "window": CHAT_WINDOW, "batch": size, "heldout_windows": 2 * size,
                              "generate_seconds": round(seconds, 1)}
    return mixed


def optimizations_params(name: str, given: dict) -> dict:
    from workbench.core import optimizations

    return optimizations.get(name).resolve(given)
