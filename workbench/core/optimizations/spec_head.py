"""A feature-level draft head for speculative decoding (``speculative:method=draft-head``).

A drafting *model* has to rebuild from tokens what the target already knows; a draft *head* starts from the
target's own last hidden state (EAGLE, Li et al. 2024; Hydra, Ankner et al. 2024). After a verify step the target
has computed the (final-norm) feature ``f_t`` of the last accepted position and chosen its next token ``x``; the
head predicts the feature the target will have after reading ``x``,

    h = norm(u + MLP(rmsnorm(u))),  u = W [f_t ; embed(x)]

and the target's own LM head, restricted to the ``vocab`` most frequent tokens, turns ``h`` into the next draft; the
head then runs on its own prediction for the drafts after it. No attention, so no draft KV cache to roll back.

Built here from the target: the token embedding and LM head are the target's (frozen, shared), the MLP starts as a
copy of the target's last block's MLP, ``W`` as [I | I] (feature plus token, as a residual stream adds them), the
output norm as the target's final norm. Trained on the target's features over the built-in text (teacher-forced,
unrolled over ``unroll`` drafts so the head learns from its own predictions): smooth-L1 to the next feature plus
cross-entropy to the target's next token (EAGLE's objective), for at most ``seconds``.
"""

from __future__ import annotations

import time


def _parts(model):
    """(embedding, lm_head weight, final norm, last block's MLP) of a Llama-family causal LM."""
    from workbench.core.errors import InputError
    from workbench.core.optimizations._common import layers_path

    decoder = model.get_decoder()
    norm = getattr(decoder, "norm", None)
    blocks = model.get_submodule(layers_path(model))
    mlp = getattr(blocks[-1], "mlp", None)
    if norm is None or mlp is None or not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
        raise InputError("speculative:method=draft-head: needs a Llama-family model (a final norm and gated MLP "
                         "blocks); expected llama, mistral, qwen2 or qwen3", param="opt")
    return model.get_input_embeddings(), model.get_output_embeddings().weight, norm, mlp


def build(model, vocab_ids):
    """The head for ``model`` (its parts copied where trained, shared where frozen), on the model's device."""
    import copy

    import torch

    emb, head_w, norm, mlp = _parts(model)
    d = head_w.shape[1]

    class DraftHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(2 * d, d, bias=False)
            with torch.no_grad():
                self.fc.weight.copy_(torch.cat([torch.eye(d), torch.eye(d)], dim=1))
            self.mlp = copy.deepcopy(mlp).float()
            self.pre = torch.nn.RMSNorm(d, eps=1e-6)
            self.out = copy.deepcopy(norm).float()
            self.register_buffer("vocab", vocab_ids.clone(), persistent=False)
            self.register_buffer("rows", head_w.detach()[vocab_ids].float().clone(), persistent=False)
            self.__dict__["embed"] = emb  # the target's table, frozen, not a submodule (not counted twice)

        def forward(self, feature, token):
            u = self.fc(torch.cat([feature, self.embed(token).to(feature.dtype)], dim=-1))
            return self.out(u + self.mlp(self.pre(u)))

        def logits(self, h):
            return h @ self.rows.t()

        def draft(self, feature, token: int, k: int) -> list[int]:
            """k greedy drafts after ``token``, whose feature-in-waiting is predicted from ``feature`` [d]."""
            out = []
            f = feature.to(self.rows.dtype).view(1, -1)
            t = torch.tensor([token], device=f.device)
            for _ in range(k):
                f = self(f, t)
                t = self.vocab[self.logits(f).argmax(-1)]
                out.append(int(t))
            return out

    return DraftHead().to(head_w.device)


# instructions over built-in passages: the chat turns the head learns the model's own replies to
INSTRUCTIONS = ("Summarise this passage in three sentences.", "Explain the main idea of this passage to a beginner.",
                "Rewrite this passage as a short bulleted list.", "Write two questions a reader might ask about "
                "this passage, with answers.", "What is the most important point of this passage, and why?",
                "Write a short poem inspired by this passage.", "Give a one-paragraph summary of this passage.",
                "Write a short Python example that illustrates this passage.", "List the key terms in this "
                "passage and define each one.", "Rewrite this passage in plain, simple English.",
                "Write a short story that uses the idea of this passage.", "What would a critic say about this "
                "passage? Answer briefly.")


def chat_turns(n: int) -> list[str]:
    """``n`` distinct instructions over built-in passages: passage ``i % P`` with an instruction that moves on each
    time the passages come round again (about 700 passages times 12 instructions)."""
    from workbench.core.optimizations.calibration import passages

    texts = passages(n)
    if not texts:
        return []
    count, p = len(INSTRUCTIONS), len(texts)
    # round r pairs passage j with instruction (j + r) % count: a pair never comes twice
    return [f"{INSTRUCTIONS[(i % p + i // p) % count]}\n\n{texts[i % p]}" for i in range(min(n, p * count))]


def _generate_batch(batch: int, device: str) -> int:
    """Sequences generated at once: ``batch``, or 128 on a GPU and 16 elsewhere."""
    return batch or (128 if str(device).startswith("cuda") else 16)


def self_turns(model, tokenizer, n: int, device: str, batch: int = 0, max_tokens: int = 64, seed: int = 0) -> list:
    """Up to ``n`` user turns the model writes itself (Magpie, Xu et al. 2024): given only its chat template's text
    up to a user message, an instruction-tuned model samples a plausible request — general-domain, unlike the
    built-in passages (SmolLM2 wrote recipes, product launches, marathon training). Sampled at temperature 1, top-p
    0.95, seeded; a turn counts only where the model closed it within ``max_tokens``; duplicates dropped. Empty
    where the tokenizer has no chat template."""
    import torch

    template = getattr(tokenizer, "chat_template", None)
    if not template or n <= 0:
        return []
    mark = "OPTBENCH-USER-TURN"
    text = tokenizer.apply_chat_template([{"role": "user", "content": mark}], add_generation_prompt=True,
                                         tokenize=False)
    prefix = text[:text.index(mark)]
    batch = _generate_batch(batch, device)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    enc = tokenizer([prefix], return_tensors="pt", add_special_tokens=False).to(device)
    out: list[str] = []
    seen: set[str] = set()
    cuda = [torch.device(device).index or 0] if str(device).startswith("cuda") else []
    with torch.random.fork_rng(devices=cuda):  # seeded here, the caller's random state untouched
        torch.manual_seed(seed)
        for _ in range(0, 2 * n, batch):  # at most twice the turns asked for: some are open-ended or repeated
            ids = enc["input_ids"].expand(batch, -1)
            with torch.inference_mode():
                got = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                     do_sample=True, temperature=1.0, top_p=0.95, pad_token_id=pad)
            for row in got[:, ids.shape[1]:].tolist():
                if eos not in row:
                    continue  # not closed within max_tokens
                turn = tokenizer.decode(row[:row.index(eos)], skip_special_tokens=True).strip()
                if len(turn) >= 12 and turn not in seen:
                    seen.add(turn)
                    out.append(turn)
            if len(out) >= n:
                break
    return out[:n]


def chat_windows(model, tokenizer, n: int, length: int, new_tokens: int, device: str, batch: int = 0,
                 turns: list | None = None) -> list:
    """``n`` windows of ``length`` tokens ending in the model's own greedy replies to chat-formatted instructions
    over built-in passages (what the head drafts at run time is a reply, not the built-in prose): self-distillation
    data, as EAGLE regenerates its training conversations with the target. ``batch``: replies generated at once
    (0: 128 on a GPU, 16 elsewhere); ``turns``: the user turns (default ``chat_turns(n)``). A turn whose prompt and
    reply are shorter than the window gives none."""
    import torch

    batch = _generate_batch(batch, device)
    turns = chat_turns(n) if turns is None else turns
    if getattr(tokenizer, "chat_template", None):
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                               tokenize=False) for t in turns]
    else:  # a base model's tokenizer: the instruction as plain text, the reply after it
        texts = [t + "\n\n" for t in turns]
    side, pad = tokenizer.padding_side, tokenizer.pad_token_id
    tokenizer.padding_side = "left"
    out = []
    try:
        for i in range(0, len(texts), batch):
            enc = tokenizer(texts[i:i + batch], return_tensors="pt", padding=True, add_special_tokens=False,
                            return_token_type_ids=False).to(device)
            with torch.inference_mode():
                ids = model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                     pad_token_id=pad if pad is not None else tokenizer.eos_token_id)
            real = torch.cat([enc["attention_mask"], torch.ones_like(ids[:, enc["input_ids"].shape[1]:])], dim=1)
            for row, mask in zip(ids, real):
                if int(mask[-length:].sum()) == length:  # no padding inside the window
                    out.append({"input_ids": row[-length:].unsqueeze(0)})
    finally:
        tokenizer.padding_side = side
    return out


def features(model, batches) -> tuple:
    """(features [N, L, d] float32 — the final-norm hidden states —, the target's argmax [N, L], tokens [N, L])."""
    import torch

    decoder, head = model.get_decoder(), model.get_output_embeddings()
    fs, ys, xs = [], [], []
    with torch.inference_mode():
        for b in batches:
            h = decoder(input_ids=b["input_ids"]).last_hidden_state
            fs.append(h.float())
            ys.append(head(h).argmax(-1))
            xs.append(b["input_ids"])
    return torch.cat(fs), torch.cat(ys), torch.cat(xs)


def train(head, f, y, x, seconds: float, steps: int, unroll: int = 3, batch: int = 256, lr: float = 2e-3,
          ce_weight: float = 0.1, noise: float = 0.1, weight_decay: float = 0.01, log=None) -> dict:
    """Teacher-forced on positions t: from (f_t, x_{t+1}) predict f_{t+1} and the target's y_{t+1}, then from
    the prediction and x_{t+2} the next, ``unroll`` times; the input feature gets uniform noise of ``noise`` times
    the features' spread (EAGLE's regulariser: at run time the head reads its own, imperfect predictions).
    Returns what it did."""
    import torch

    n, length, d = f.shape
    vocab_size = max(int(y.max()) + 1, int(head.vocab.max()) + 1)
    index = torch.full((vocab_size,), -100, dtype=torch.long, device=f.device)
    index[head.vocab] = torch.arange(len(head.vocab), device=f.device)
    starts = torch.arange(length - unroll - 1, device=f.device)
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    spread = float(f[: min(len(f), 8)].std()) * noise
    t0, step, losses = time.perf_counter(), 0, []
    g = torch.Generator(device="cpu").manual_seed(0)
    head.train()
    while step < steps and time.perf_counter() - t0 < seconds:
        rows = torch.randint(0, n, (batch,), generator=g).to(f.device)
        cols = starts[torch.randint(0, len(starts), (batch,), generator=g).to(f.device)]
        h = f[rows, cols]
        if spread:
            h = h + (torch.rand_like(h) * 2 - 1) * spread
        loss = 0.0
        for j in range(1, unroll + 1):
            h = head(h, x[rows, cols + j])
            target = f[rows, cols + j]
            label = index[y[rows, cols + j]]
            loss = loss + torch.nn.functional.smooth_l1_loss(h, target) + ce_weight * torch.nn.functional.cross_entropy(
                head.logits(h), label, ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()) / unroll)
        step += 1
        if log and step % 50 == 0:
            log(f"speculative: draft head step {step}, loss {losses[-1]:.3f}")
    head.eval()
    return {"steps": step, "seconds": round(time.perf_counter() - t0, 2), "loss_first": losses[0] if losses else None,
            "loss_last": sum(losses[-10:]) / max(1, len(losses[-10:])), "unroll": unroll, "batch": batch, "lr": lr, "noise": noise}


def agreement(head, f, y, x, depth: int = 3) -> list[float]:
    """Top-1 agreement with the target's next token, teacher-forced, for the 1st..``depth``-th draft of a round
    (the j-th draft runs on the head's own j-1 predictions): the acceptance a round would see."""
    import torch

    n, length, _ = f.shape
    with torch.inference_mode():
        cols = torch.arange(length - depth - 1, device=f.device)
        h = f[:, cols].reshape(-1, f.shape[-1])
        rows = torch.arange(n, device=f.device).repeat_interleave(len(cols))
        cc = cols.repeat(n)
        out, alive = [], torch.ones(len(rows), dtype=torch.bool, device=f.device)
        for j in range(1, depth + 1):
            h = head(h, x[rows, cc + j])
            guess = head.vocab[head.logits(h).argmax(-1)]
            alive = alive & (guess == y[rows, cc + j])  # a draft counts only if every one before it did
            out.append(float(alive.float().mean()))
    return out


LOOKUP_TOKENS = 10  # what a lookup round of draft-head,lookup=N may propose (prompt lookup's own default)


def head_greedy_class():
    """``HeadGreedy``: graph-decode's verify-step loop (``spec_lookup.LookupGreedy``) with the draft head as the
    drafter. Its step returns the target's argmax *and* final-norm feature at every position, so the head starts
    each round from the feature of the last accepted position. With ``lookup`` = n > 0, a round whose last n..
    ``ngram`` tokens occurred earlier in the text drafts up to ``LOOKUP_TOKENS`` tokens that followed them instead
    (prompt lookup): a head without attention cannot copy from the context, which lookup does for free. The verify
    step is then that wide (on a GPU the head's ``num_tokens`` drafts are padded to it, nearly free there; the
    eager loop on a CPU verifies only what was proposed)."""
    from workbench.core.optimizations.fastgen import cache_argument
    from workbench.core.optimizations.spec_lookup import LookupGreedy, propose

    class HeadGreedy(LookupGreedy):
        what = "speculative:draft-head (verify step)"

        pad_eager = False
        one_token_rounds = False  # the head drafts every round (and its verify step returns features too)

        def __init__(self, model, batch: int, max_len: int, head, num_tokens: int, stats=None, lookup: int = 0,
                     ngram: int = 3, **kw) -> None:
            width = max(num_tokens, LOOKUP_TOKENS) if lookup else num_tokens
            super().__init__(model, batch, max_len, width, max(ngram, lookup), stats=stats, **kw)
            self.head, self.lookup, self.head_tokens = head, lookup, num_tokens
            self._decoder, self._lm_head = model.get_decoder(), model.get_output_embeddings()
            self._dec_kw = {cache_argument(self._decoder): self.cache}
            self._feats = self._feat = self._vfeat = None

        def _forward(self, tokens, cache_position):
            h = self._decoder(input_ids=tokens, cache_position=cache_position, use_cache=True,
                              **self._dec_kw).last_hidden_state
            return self._lm_head(h).argmax(dim=-1), h

        def _decode_step(self, tokens, cache_position):
            return self._forward(tokens, cache_position)

        def _graph_body(self) -> None:
            argmax, h = self._step(self._vin, self._vpos)
            self._vout.copy_(argmax)
            self._vfeat.copy_(h)

        def _static_buffers(self, token, pos) -> None:
            super()._static_buffers(token, pos)
            d = self._lm_head.weight.shape[1]
            self._vfeat = self.torch.zeros((1, self.num_tokens + 1, d), device=token.device,
                                           dtype=self._lm_head.weight.dtype)

        def _prefill(self, input_ids, t: int, device) -> int:
            argmax, h = self._forward(input_ids, self.torch.arange(t, device=device))
            self._feat = h[0, -1]
            return int(argmax[0, -1])

        def _verify(self, tokens: list[int], pos: int, device) -> list[int]:
            torch = self.torch
            if self.graph is not None:
                self._vin.copy_(torch.tensor([tokens], device=device))
                self._vpos.copy_(torch.arange(pos, pos + len(tokens), device=device))
                self.graph.replay()
                self._feats = self._vfeat[0]
                return self._vout[0].tolist()
            if self.mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            argmax, h = self._step(torch.tensor([tokens], device=device),
                                   torch.arange(pos, pos + len(tokens), device=device))
            self._feats = h[0]
            return argmax[0].tolist()

        def _propose(self, text: list[int]) -> list[int]:
            if self.lookup:
                looked = propose(text, self.num_tokens, self.ngram, self.lookup)
                if looked:
                    if self.stats is not None:
                        self.stats.live["lookup_rounds"] = self.stats.live.get("lookup_rounds", 0) + 1
                    return looked
            return self.head.draft(self._feat, text[-1], self.head_tokens)

        def _accepted(self, n_ok: int) -> None:
            self._feat = self._feats[n_ok].clone()

    return HeadGreedy
