"""A draft model inside graph-decode's loop: ``speculative:method=draft`` + ``graph-decode``.

transformers' assisted generation (what ``speculative:method=draft`` runs alone) keeps both models on dynamic
caches in a Python loop; on a GPU that loop's host time is what graph-decode removed. Here both models run on
static caches with captured steps:

- the draft is a ``GraphedGreedy`` of its own (static cache, its one-token step compiled and, on CUDA, captured
  as a CUDA graph that also advances its position): a round replays that graph ``num_tokens`` times from the
  newest token, reading the drafts back once;
- the model verifies ``[newest, d1 .. dK]`` in one step of fixed shape (``LookupGreedy``'s verify step, captured
  the same way) and keeps the drafts up to the first that differs from its own argmax, plus its own next token.

The draft's cache then holds every accepted token but, when all K were accepted, the K-th (drafted last, never fed
back): that one is fed in a single draft step before the next round. Rows written for rejected drafts lie beyond
the draft's write position, which is moved back to the first unaccepted row (``rewind``, as for the model), so the
causal mask hides them until they are overwritten. Greedy acceptance keeps the output the model's own.

With ``speculative:gate=auto`` (``spec_lookup.CostGate``) a round first asks whether drafting pays — the seconds a
drafting round (K draft steps + the verify step) and a one-token step of the model took, and the tokens drafting
rounds gave, all measured in this loop — and otherwise runs a one-token step of the model; the draft catches up on
the tokens it missed (one eager forward) when drafting resumes; that catch-up's seconds go to the gate
(``observe_resume``), which counts them in what a re-try costs. A draft that agrees too rarely then costs about what
re-trying it costs (at most ``explore_share`` of the rounds' time), not a factor.

Batch 1. The draft proposes exactly ``num_tokens`` per round (method=draft's ``schedule`` and ``confidence`` belong
to transformers' loop and do not apply here; the report says so).
"""

from __future__ import annotations

import time

from workbench.core.optimizations.fastgen import GraphedGreedy
from workbench.core.optimizations.spec_lookup import LookupGreedy, host_lengths, rewind


class _Drafter(GraphedGreedy):
    """The draft model's loop: prefill, then ``draft(token, pos, k)`` — k greedy tokens after ``token`` at ``pos``,
    written into its cache from ``pos`` on."""

    what = "speculative:draft (the draft's step)"

    def __init__(self, model, *args, **kw) -> None:
        import inspect

        super().__init__(model, *args, **kw)
        # a prefill or catch-up needs no logits at all: one row where the draft's forward takes logits_to_keep
        takes = "logits_to_keep" in inspect.signature(type(model).forward).parameters
        self.last_logits_only = {"logits_to_keep": 1} if takes else {}
        self.at = 0  # the cache's write position
        self._host_lengths = host_lengths(self.cache)  # then rewind every time (see spec_lookup.host_lengths)
        self._graph_at = None  # the position the captured step reads next (None: unknown, set it)

    def prefill(self, input_ids) -> None:
        torch = self.torch
        t = input_ids.shape[1]
        device = input_ids.device
        self.cache.reset()
        self.model(input_ids=input_ids, cache_position=torch.arange(t, device=device), use_cache=True,
                   **self.last_logits_only, **self._cache_kw)
        if self.mode == "graph" and self.graph is None and device.type == "cuda":
            token = input_ids[:, -1:].clone()
            self._capture(token, torch.tensor([t], device=device, dtype=torch.long))
            self.cache.reset()  # the warm-ups wrote rows past the prompt: fill it again from a clean cache
            self.model(input_ids=input_ids, cache_position=torch.arange(t, device=device), use_cache=True,
                       **self.last_logits_only, **self._cache_kw)
        self.at, self._graph_at = t, None

    def fed(self, ids: list[int], pos: int) -> None:
        """Write ``ids`` into the cache from ``pos`` on (one eager forward, no logits kept)."""
        torch = self.torch
        device = self.model.device
        if pos != self.at or self._host_lengths:
            rewind(self.cache, pos)
        self.model(input_ids=torch.tensor([ids], device=device),
                   cache_position=torch.arange(pos, pos + len(ids), device=device), use_cache=True,
                   **self.last_logits_only, **self._cache_kw)
        self.at = pos + len(ids)

    def draft(self, token: int, pos: int, k: int, read: bool = True) -> list[int]:
        """``read=False``: only write the steps into the cache (a catch-up), no drafts read back (no wait for the
        device)."""
        torch = self.torch
        if pos != self.at or self._host_lengths:  # rows of rejected drafts (none after a round that kept all)
            rewind(self.cache, pos)
        self.at = pos + k
        if self.graph is not None:
            self._tok.fill_(token)
            if pos != self._graph_at:  # else the graph's own position already advanced to ``pos``
                self._pos.fill_(pos)
            self._graph_at = pos + k
            out = []
            for _ in range(k):
                self.graph.replay()
                if read:
                    out.append(self._tok.clone())
            return torch.cat(out, dim=1)[0].tolist() if read else []
        return self._steps([token], pos, k, read)

    def compile_step(self) -> None:
        """The eager loop's one-token step through inductor (CPU: C++ kernels around the draft's matmuls); a
        several-position step (``draft_after``'s first) stays eager (``_steps``), so it compiles for one shape."""
        self.log("speculative: compiling the draft's one-token step (inductor, CPU; the first call pays it)")
        self._step = self.torch.compile(self._decode_step, fullgraph=True, dynamic=False)

    def draft_after(self, tokens: list[int], pos: int, k: int) -> list[int]:
        """Eager loop only: k greedy tokens after ``tokens``, which are written from ``pos`` on by the first step
        (one forward of their positions) — a fully accepted round's K-th draft and the newest token together,
        where ``draft`` would spend a step on each."""
        if pos != self.at or self._host_lengths:
            rewind(self.cache, pos)
        self.at = pos + len(tokens) + k - 1
        return self._steps(tokens, pos, k)

    def _steps(self, tokens: list[int], pos: int, k: int, read: bool = True) -> list[int]:
        """k greedy tokens, uncaptured: the first step reads ``tokens`` (written from ``pos`` on), each later one
        the token before it. A several-position step runs eagerly (the compiled step has one shape). ``read=False``:
        no read-back (no wait for the device)."""
        torch = self.torch
        device = self.model.device
        tok = torch.tensor([tokens], device=device)
        p = torch.arange(pos, pos + len(tokens), device=device)
        out = []
        for _ in range(k):
            if self.mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            step = self._step if tok.shape[1] == 1 else self._decode_step
            tok = step(tok, p).clone()
            p = p[-1:] + 1
            out.append(tok)
        return torch.cat(out, dim=1)[0].tolist() if read else []


class DraftGreedy(LookupGreedy):
    """``generate(ids, n_new, on_step)`` like ``GraphedGreedy``, drafting with a second model every round — or,
    with a ``CostGate``, only where the measured rounds say drafting pays (else a one-token step of the model)."""

    what = "speculative:draft+graph-decode (verify step)"
    pad_eager = False
    gate_in_propose = True  # the gate decides before the draft spends its K steps

    def __init__(self, model, draft, batch: int, max_len: int, num_tokens: int, stats=None, gate=None,
                 draft_compile: bool = False, **kw) -> None:
        super().__init__(model, batch, max_len, num_tokens, 1, stats=stats, gate=gate, **kw)
        self.drafter = _Drafter(draft, 1, self.max_len + 1, mode=self.mode, log=self.log,
                                **{k: v for k, v in kw.items() if k not in ("mode", "log")})
        if draft_compile:
            if self.drafter.mode == "eager" and next(draft.parameters()).device.type == "cpu":
                self.drafter.compile_step()
            else:
                self.log("speculative: draft_compile is for a CPU draft; on CUDA the draft's step is compiled and "
                         "captured already")
        self._fed = 0  # the draft's cache holds the text's tokens at positions [0, _fed)
        self._start: int | None = None  # the position the last round drafted from (None: it did not draft)
        self._drafts: list[int] = []

    def _prefill(self, input_ids, t: int, device) -> int:
        first = super()._prefill(input_ids, t, device)
        self.drafter.prefill(input_ids)
        self._fed, self._start = t, None
        return first

    def _catch_up(self, text: list[int], newest: int) -> None:
        """Feed the draft the tokens it has not seen before the newest one: the K-th draft of a fully accepted
        round (one step), or what one-token rounds produced while the gate kept the draft idle (one eager forward
        of those positions)."""
        missing = text[self._fed:newest]
        if len(missing) == 1:
            self.drafter.draft(missing[0], self._fed, 1, read=False)
        elif missing:  # the cost of the rounds skipped, not of this one: kept out of the gate's timing
            torch = self.torch
            t0 = time.perf_counter()
            self.drafter.fed(missing, self._fed)
            if self.drafter.model.device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            self._untimed += seconds
            if self._round_gate is not None:  # what resuming costs: the gate weighs it before the next re-try
                self._round_gate.observe_resume(seconds)
        self._fed = newest

    def _propose(self, text: list[int]) -> list[int]:
        self._start = None
        gate = self._round_gate
        if gate is not None and not gate.verify(self._match, self.num_tokens + 1):
            return []
        newest = len(text) - 1  # its position; the draft needs every token before it
        if newest - self._fed == 1 and self.drafter.mode == "eager":  # the last round kept all K drafts: feed d_K
            self._start, self._drafts = newest, self.drafter.draft_after(text[self._fed:], self._fed,
                                                                          self.num_tokens)  # with the newest
            self._fed = newest
            return self._drafts
        self._catch_up(text, newest)
        self._start, self._drafts = newest, self.drafter.draft(text[-1], newest, self.num_tokens)
        return self._drafts

    def _accepted(self, n_ok: int) -> None:
        """The draft's rows from ``start`` on hold the newest token and d1 .. d(K-1): valid up to the accepted
        ones (a fully accepted round leaves d_K to ``_catch_up``)."""
        if self._start is not None:
            self._fed = self._start + min(n_ok + 1, len(self._drafts))
