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
the draft's write position, which is moved back to the first unaccepted row (``_rewind``, as for the model), so the
causal mask hides them until they are overwritten. Greedy acceptance keeps the output the model's own.

Batch 1. The draft proposes exactly ``num_tokens`` per round (method=draft's ``schedule`` and ``confidence`` belong
to transformers' loop and do not apply here; the report says so).
"""

from __future__ import annotations

from workbench.core.optimizations.fastgen import GraphedGreedy
from workbench.core.optimizations.spec_lookup import LookupGreedy, rewind


class _Drafter(GraphedGreedy):
    """The draft model's loop: prefill, then ``draft(token, pos, k)`` — k greedy tokens after ``token`` at ``pos``,
    written into its cache from ``pos`` on."""

    what = "speculative:draft (the draft's step)"

    def prefill(self, input_ids) -> None:
        torch = self.torch
        t = input_ids.shape[1]
        device = input_ids.device
        self.cache.reset()
        self.model(input_ids=input_ids, cache_position=torch.arange(t, device=device), use_cache=True,
                   **self._cache_kw)
        if self.mode == "graph" and self.graph is None and device.type == "cuda":
            token = input_ids[:, -1:].clone()
            self._capture(token, torch.tensor([t], device=device, dtype=torch.long))
            self.cache.reset()  # the warm-ups wrote rows past the prompt: fill it again from a clean cache
            self.model(input_ids=input_ids, cache_position=torch.arange(t, device=device), use_cache=True,
                       **self._cache_kw)

    def draft(self, token: int, pos: int, k: int) -> list[int]:
        torch = self.torch
        rewind(self.cache, pos)
        if self.graph is not None:
            self._tok.fill_(token)
            self._pos.fill_(pos)
            out = []
            for _ in range(k):
                self.graph.replay()
                out.append(self._tok.clone())
            return torch.cat(out, dim=1)[0].tolist()
        device = self.model.device
        tok = torch.tensor([[token]], device=device)
        p = torch.tensor([pos], device=device)
        out = []
        for _ in range(k):
            if self.mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            tok = self._step(tok, p).clone()
            p = p + 1
            out.append(tok)
        return torch.cat(out, dim=1)[0].tolist()


class DraftGreedy(LookupGreedy):
    """``generate(ids, n_new, on_step)`` like ``GraphedGreedy``, drafting with a second model every round."""

    what = "speculative:draft+graph-decode (verify step)"
    pad_eager = False
    one_token_rounds = False  # the draft proposes every round

    def __init__(self, model, draft, batch: int, max_len: int, num_tokens: int, stats=None, **kw) -> None:
        super().__init__(model, batch, max_len, num_tokens, 1, stats=stats, **kw)
        self.drafter = _Drafter(draft, 1, self.max_len + 1, mode=self.mode, log=self.log,
                                **{k: v for k, v in kw.items() if k not in ("mode", "log")})
        self._pos_next = 0  # the newest token's position (the draft's cache holds everything before it)
        self._owed: tuple[int, int] | None = None  # (token, position) drafted last and accepted, not yet fed back
        self._round: tuple[int, list[int]] = (0, [])

    def _prefill(self, input_ids, t: int, device) -> int:
        first = super()._prefill(input_ids, t, device)
        self.drafter.prefill(input_ids)
        self._pos_next, self._owed = t, None
        return first

    def _propose(self, text: list[int]) -> list[int]:
        if self._owed is not None:  # the last round's K-th draft was accepted: the draft has not seen it yet
            token, pos = self._owed
            self.drafter.draft(token, pos, 1)
            self._owed = None
        start = self._pos_next
        drafts = self.drafter.draft(text[-1], start, self.num_tokens)
        self._round = (start, drafts)
        return drafts

    def _accepted(self, n_ok: int) -> None:
        start, drafts = self._round
        self._pos_next = start + n_ok + 1
        if n_ok == len(drafts):
            self._owed = (drafts[-1], start + n_ok)
