"""Prompt-lookup speculation inside graph-decode's loop: ``speculative:method=prompt-lookup`` + ``graph-decode``.

transformers' assisted generation (what ``speculative`` runs alone) is a Python loop around a dynamic cache; it
cannot take graph-decode's static cache and captured step. This loop can: every round it

1. proposes up to ``num_tokens`` tokens by prompt lookup (``propose``: the longest of the last ``ngram``..1 tokens
   that occurred earlier in the text so far, prompt included, and what followed its earliest occurrence — the rule
   of transformers' ``PromptLookupCandidateGenerator``), padded to exactly ``num_tokens`` with the last token;
   when nothing was proposed it runs a one-token step instead (on CUDA its own captured graph: on an H200 a
   verify round of 11 positions cost about 3x a decode step, so a round that drafts nothing should not pay it);
2. runs one *verify step* of fixed shape — ``[last token, d1 .. dK]`` at cache positions ``p .. p + K`` through the
   static cache — compiled and, on CUDA, captured once as a CUDA graph like graph-decode's decode step;
3. keeps the drafts up to the first one that differs from the model's own argmax, plus the model's next token.

Greedy acceptance keeps the output the model's own: a token stands only where it equals the model's argmax given
everything before it, so a padding token that happens to match is a correct token too. The cache rows written for
rejected drafts lie beyond the accepted position; ``rewind`` moves the cache's own write position back to the
accepted one, so the causal mask hides those rows until the next round overwrites them. At batch 1 on a GPU the
step reads the weights once for K + 1 positions, so a round costs about one decode step however many drafts it
accepts; on a CPU K + 1 positions cost more than one.

Batch 1 only. In bf16 the verify step's several-position matmuls can round near-ties differently from one-token
steps (seen on CPU, benchmarks/results/speculative_cpu.md); the speculative report's ``greedy_check`` says whether
a run's tokens equal plain greedy decoding.
"""

from __future__ import annotations

import time
from typing import Callable

from workbench.core.optimizations.fastgen import GraphedGreedy


def propose(tokens: list[int], k: int, max_ngram: int, min_ngram: int = 1) -> list[int]:
    """Up to ``k`` tokens that followed the earliest earlier occurrence of the longest n-gram (``max_ngram`` down to
    ``min_ngram``) ending ``tokens``; [] when nothing matches."""
    return propose_match(tokens, k, max_ngram, min_ngram)[0]


def propose_match(tokens: list[int], k: int, max_ngram: int, min_ngram: int = 1) -> tuple[list[int], int]:
    """``propose``'s drafts and the length of the n-gram they were matched on (0: nothing matched)."""
    n = len(tokens)
    for size in range(min(max_ngram, n - 1), max(1, min_ngram) - 1, -1):
        tail = tokens[n - size:]
        for start in range(0, n - size):
            if tokens[start:start + size] == tail:
                follow = tokens[start + size:start + size + k]
                if follow:
                    return follow, size
    return [], 0


def host_lengths(cache) -> bool:
    """Whether a layer keeps a host copy of its write position (sliding-window layers): captured replays do not
    advance it, so a loop cannot skip a rewind that would have set it."""
    return any(hasattr(layer, "cumulative_length_int") for layer in getattr(cache, "layers", ()))


def rewind(cache, pos: int) -> None:
    """A static cache's own write position back to ``pos`` (the first unaccepted row). transformers 5.2x's
    StaticCache layers write at a ``cumulative_length`` they advance themselves, and (5.24, Llama) take the mask and
    the rotary positions from it too, ignoring ``cache_position`` (still passed, for versions that read it): left at
    the verify step's end it would put the next round's rows after the rejected drafts, at shifted positions, with
    the rejected rows visible. In place: captured graphs read it. One multi-tensor zero and add for all layers
    (on a GPU a ``fill_`` per layer was 30 launches, 0.20 ms of an H100 round of demo:smollm2 while the GPU waited:
    results/h100_2026-12-07b/spec_diag_draft_cuda.json)."""
    import torch

    lengths = []
    for layer in getattr(cache, "layers", ()):
        length = getattr(layer, "cumulative_length", None)
        if isinstance(length, torch.Tensor):
            lengths.append(length)
        if hasattr(layer, "cumulative_length_int"):  # sliding-window layers keep a host copy for their mask sizes
            layer.cumulative_length_int = pos  # (a captured graph has it baked in: such models are untested here)
    if lengths:
        torch._foreach_zero_(lengths)
        torch._foreach_add_(lengths, pos)


class CostGate:
    """Whether a round that has drafts verifies them or runs a one-token step instead (``speculative:gate=auto``).

    A verify round of ``K + 1`` positions costs more than a one-token step (at K = 10: about 3x on an H200, under
    1.5x on an AVX-512-BF16 EPYC — inferred, 1.6x at 2 tokens a round —, 5-6x measured on an AVX2 EPYC whose bf16
    matmuls are emulated), and what it gains depends on how good the match is: where the output repeats the prompt a
    3-gram match gives ~8 tokens a round, on an open question a 1-gram match gave ~2. The gate keeps, from the
    rounds themselves, the seconds a round of each width took and the tokens a verify round gave per match length,
    and verifies only where that pays: ``tokens(match) / seconds(K + 1) >= 1 / seconds(1)``. Unknown is tried: a
    match length never verified is verified; when the one-token cost is missing the gate skips to measure it (two
    rounds: the first of each width is not timed); a match length the gate keeps skipping earns ``explore_share``
    of a step's time per skip and is verified again once that covers what a try is expected to lose (so a text that
    starts copying later is noticed, at a bounded cost where it never does). A draft model idle through skipped
    rounds must catch up on the tokens it missed before it drafts again: that cost (``observe_resume``, measured in
    the loop) is part of what a try loses (an H100 run drafting with a 6-block SmolLM2 student re-tried every ~7
    skips and its untimed catch-ups made gate=auto 0.43x graph-decode, below gate=off's 0.71x). The output is the
    model's own either way (a one-token step is the model's own step)."""

    def __init__(self, explore_share: float = 0.05, decay: float = 0.8, gain_decay: float = 0.5) -> None:
        # a round's cost is steady; what a match gives changes with the text (a copying stretch starts or ends), so
        # the tokens' average forgets faster: one success after a run of failures is enough to verify again
        self.explore_share, self.decay, self.gain_decay = explore_share, decay, gain_decay
        self.seconds: dict[int, float] = {}  # positions in a round -> moving average of its seconds
        self.tokens: dict[int, float] = {}  # match length -> moving average of a verify round's tokens
        self._credit: dict[int, float] = {}  # match length -> exploration time saved up while skipping it
        self._seen: set[int] = set()
        self.skipped = 0  # rounds that had drafts and ran a one-token step
        self.resume: float | None = None  # moving average of the seconds a drafter takes to resume after skips

    def verify(self, match: int, positions: int) -> bool:
        gain, wide, one = self.tokens.get(match), self.seconds.get(positions), self.seconds.get(1)
        if gain is None or wide is None:
            return True
        if one is None:  # measure the one-token step
            self.skipped += 1
            return False
        loss = wide - gain * one  # what verifying costs beyond the tokens it is expected to give
        if loss <= 0.0:
            self._credit[match] = 0.0
            return True
        credit = self._credit.get(match, 0.0) + self.explore_share * one
        if credit >= loss + (self.resume or 0.0):  # re-try: at most ``explore_share`` of the skipped rounds' time
            # goes to finding out, the drafter's catch-up included
            self._credit[match] = 0.0
            return True
        self._credit[match] = credit
        self.skipped += 1
        return False

    def observe(self, positions: int, match: int, seconds: float, tokens: int) -> None:
        """One round: ``positions`` run, matched on a ``match``-gram, ``seconds`` long, ``tokens`` kept. The first
        round of each width is not timed (it may compile or initialise lazily) and a round is counted as at most 4x
        the average, so one stall does not mislead the gate for long."""
        if positions in self._seen:
            old = self.seconds.get(positions)
            self.seconds[positions] = self._mix(old, seconds if old is None else min(seconds, 4.0 * old))
        self._seen.add(positions)
        if positions > 1:
            self.tokens[match] = self._mix(self.tokens.get(match), float(tokens), self.gain_decay)

    def observe_resume(self, seconds: float) -> None:
        """A drafter caught up on the tokens of skipped rounds in ``seconds`` before drafting again."""
        self.resume = self._mix(self.resume, seconds)

    def _mix(self, old: float | None, new: float, decay: float | None = None) -> float:
        decay = self.decay if decay is None else decay
        return new if old is None else decay * old + (1.0 - decay) * new

    def summary(self) -> dict:
        return {"skipped_rounds": self.skipped,
                "round_ms": {str(p): round(s * 1e3, 4) for p, s in sorted(self.seconds.items())},
                "resume_ms": None if self.resume is None else round(self.resume * 1e3, 4),
                "tokens_per_verify_by_match": {str(m): round(t, 3) for m, t in sorted(self.tokens.items())}}


class LookupGreedy(GraphedGreedy):
    """``generate(ids, n_new, on_step)`` like ``GraphedGreedy``, with prompt-lookup drafts verified per round."""

    what = "speculative+graph-decode (verify step)"
    pad_eager = True  # the eager loop pads short proposals too (a padding token the model confirms is a token)
    one_token_rounds = True  # a round with nothing proposed runs a one-token step (the draft head always proposes)
    gate_in_propose = False  # True: ``_propose`` asks the gate itself, before it spends time drafting

    def __init__(self, model, batch: int, max_len: int, num_tokens: int, ngram: int, stats=None,
                 gate: CostGate | None = None, **kw) -> None:
        if batch != 1:
            raise ValueError("prompt-lookup speculation runs one sequence at a time (batch 1)")
        super().__init__(model, batch, max_len + num_tokens, **kw)  # room for the last round's drafts
        self.num_tokens, self.ngram, self.stats = num_tokens, ngram, stats
        self.gate = gate if self.one_token_rounds else None  # only a loop with one-token rounds can skip a round
        self._match = 0  # the n-gram length the last proposal was matched on
        self._round_gate = None  # the gate this call's rounds use (None where a round cannot be one token)
        self._untimed = 0.0  # seconds of this round that are not its own (a draft catching up on skipped rounds)
        self._vin = self._vpos = self._vout = None
        self.single = None  # CUDA: the one-token step's own graph (rounds with nothing proposed)
        self._capture_at = None  # the prompt's end while the graphs are captured
        self._sin = self._spos = self._sout = None
        self._host_lengths = host_lengths(self.cache)

    def _decode_step(self, tokens, cache_position):
        out = self.model(input_ids=tokens, cache_position=cache_position, use_cache=True, **self._cache_kw)
        return out.logits.argmax(dim=-1)  # [1, K + 1]: the model's next token after each position

    def _graph_body(self) -> None:
        self._vout.copy_(self._step(self._vin, self._vpos))

    def _static_buffers(self, token, pos) -> None:
        k1 = self.num_tokens + 1
        self._vin = token.new_zeros((1, k1))
        self._vpos = self.torch.arange(k1, device=token.device) + pos
        self._vout = token.new_zeros((1, k1))

    def _single_body(self) -> None:
        self._sout.copy_(self._step(self._sin, self._spos))

    def _capture_single(self, token) -> None:
        """The one-token step as a second CUDA graph; if it cannot be captured, such rounds use the verify graph."""
        torch = self.torch
        self._sin = torch.zeros((1, 1), dtype=torch.long, device=token.device)
        self._spos = torch.zeros((1,), dtype=torch.long, device=token.device)
        self._sout = torch.zeros((1, 1), dtype=torch.long, device=token.device)
        try:
            self.single = self._capture_body(self._single_body)
        except Exception as exc:  # noqa: BLE001 - the verify graph alone is still right, only slower
            self.log(f"{self.what}: the one-token step could not be captured ({type(exc).__name__}); rounds "
                     f"without drafts run the verify step")
            self.torch.cuda.synchronize()
            self.single = None

    def _before_warmup(self) -> None:
        """The warm-ups before a capture each start from the prompt's end: the cache's write position advances with
        every step (see _rewind), and a dozen wide warm-ups in a row would run past the cache's last row."""
        if self._capture_at is not None:
            self._rewind(self._capture_at)

    def _rewind(self, pos: int) -> None:
        rewind(self.cache, pos)

    # what a subclass with another drafter changes (spec_head.HeadGreedy)
    def _prefill(self, input_ids, t: int, device) -> int:
        """Fill the cache with the prompt; the model's first token."""
        logits = self.model(input_ids=input_ids, cache_position=self.torch.arange(t, device=device),
                            use_cache=True, **self._cache_kw).logits
        return int(logits[0, -1].argmax())

    def _propose(self, text: list[int]) -> list[int]:
        drafts, self._match = propose_match(text, self.num_tokens, self.ngram)
        return drafts

    def _accepted(self, n_ok: int) -> None:
        """After a verify step: drafts 1..n_ok stood and the model's token after the n_ok-th is the newest."""

    def _verify(self, tokens: list[int], pos: int, device) -> list[int]:
        torch = self.torch
        k1 = self.num_tokens + 1
        if len(tokens) == 1 and self.single is not None:
            self._sin.fill_(tokens[0])
            self._spos.fill_(pos)
            self.single.replay()
            return self._sout[0].tolist()
        if self.graph is not None:
            self._vin.copy_(torch.tensor([tokens], device=device))
            self._vpos.copy_(torch.arange(pos, pos + k1, device=device))
            self.graph.replay()
            return self._vout[0].tolist()
        if self.mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        n = len(tokens)  # k1, or 1 in the eager loop when nothing was proposed
        out = self._step(torch.tensor([tokens], device=device), torch.arange(pos, pos + n, device=device))
        return out[0].tolist()

    def generate(self, input_ids, max_new_tokens: int, on_step: Callable[..., None] | None = None):
        torch = self.torch
        b, t = input_ids.shape
        if b != 1 or t + max_new_tokens + self.num_tokens > self.max_len:
            raise ValueError(f"LookupGreedy was built for batch 1 and {self.max_len} positions")
        device = input_ids.device
        on_step = on_step or (lambda n=1: None)  # on_step(n): n tokens handed out (default 1)
        rounds = proposed = 0
        with torch.inference_mode():
            self.cache.reset()
            first = self._prefill(input_ids, t, device)
            if self.mode == "graph" and self.graph is None and device.type == "cuda":
                self._capture_at = t
                if self._capture(input_ids[:, :1], t) and self.one_token_rounds:
                    self._capture_single(input_ids[:, :1])
                self._capture_at = None
                self.cache.reset()  # the warm-up replays wrote the cache: start this call again from a clean one
                self.model(input_ids=input_ids, cache_position=torch.arange(t, device=device), use_cache=True,
                           **self._cache_kw)
            self._rewind(t)
            on_step()
            text = input_ids[0].tolist() + [first]
            out, pos = [first], t  # ``pos``: the cache position of the newest token, not yet in the cache
            # (reduce-overhead, after a failed capture, keeps one padded shape: a second would compile mid-run)
            can_single = self.one_token_rounds and (self.mode == "eager" or self.single is not None)
            gate = self._round_gate = self.gate if can_single else None
            skipped_before = gate.skipped if gate is not None else 0
            while len(out) < max_new_tokens:
                t0 = time.perf_counter()  # a round: proposing (a draft model's steps too) and verifying
                drafts = self._propose(text)
                if (drafts and gate is not None and not self.gate_in_propose
                        and not gate.verify(self._match, self.num_tokens + 1)):
                    drafts = []  # the gate: these drafts are not worth a verify round here
                pad = drafts[-1] if drafts else text[-1]
                one = not drafts and can_single
                if one:  # nothing proposed: a one-token step, cheaper than K + 1 positions on a CPU and a GPU
                    given = [text[-1]]
                elif self.mode != "eager" or (drafts and self.pad_eager):
                    given = [text[-1]] + drafts + [pad] * (self.num_tokens - len(drafts))
                else:  # eager, unpadded: a CPU pays for every position it verifies
                    given = [text[-1]] + drafts
                argmax = self._verify(given, pos, device)  # ends in .tolist(): on CUDA the round has finished
                written = pos + len(given)  # the cache's write position now (every given position was written)
                seconds, self._untimed = time.perf_counter() - t0 - self._untimed, 0.0
                rounds += 1
                n_ok = 0
                while n_ok < len(given) - 1 and argmax[n_ok] == given[n_ok + 1]:
                    n_ok += 1
                self._accepted(n_ok)
                if gate is not None:
                    gate.observe(len(given), self._match, seconds, n_ok + 1)
                proposed += max(len(drafts), n_ok)  # a padding token the model confirmed counts as proposed
                new = argmax[:n_ok + 1][:max_new_tokens - len(out)]
                out += new
                text += new
                pos += len(new)
                if (pos != written or self._host_lengths) and len(out) < max_new_tokens:  # rows of rejected
                    self._rewind(pos)  # drafts (none after a one-token step, a round that kept all, the last)
                on_step(len(new))
        if self.stats is not None:
            self.stats.add(len(out), rounds + 1, proposed)  # the prefill is a target forward too
            if self.gate is not None:
                live = self.stats.live
                live["gate"] = self.gate.summary()  # over the generator's life (the greedy check included)
                if gate is not None:  # rounds the gate ran as one token, over the calls these stats count
                    live["gate_skipped_rounds"] = live.get("gate_skipped_rounds", 0) + gate.skipped - skipped_before
        return torch.cat([input_ids, torch.tensor([out], device=device, dtype=input_ids.dtype)], dim=1)
