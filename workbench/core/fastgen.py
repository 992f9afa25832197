"""Greedy decoding with a static KV cache and the whole decode step captured as a CUDA graph.

transformers' ``generate`` spends milliseconds per token in Python around the forward pass (logits processors,
stopping criteria, cache bookkeeping, host syncs). At batch 1 a small model's forward is shorter than that, so
``generate`` cannot approach the memory-bandwidth roofline however fast the forward is. This loop does the least
possible per token: one compiled step (forward + argmax) replayed from a CUDA graph
(``torch.compile(mode="reduce-overhead")``), its output cloned before the next replay (the cause of the
"accessing tensor output of CUDAGraphs that has been overwritten" crash when it is not), and
``cudagraph_mark_step_begin`` between replays. Prefill runs eagerly once per call.

On CPU (or with compile off) the same loop runs eagerly, which is how its tokens are checked against ``generate``.
"""

from __future__ import annotations

from typing import Callable


class GraphedGreedy:
    def __init__(self, model, batch: int, max_len: int, compile_mode: str | None = "reduce-overhead") -> None:
        import torch
        from transformers import StaticCache

        self.torch = torch
        self.model = model
        self.batch = batch
        self.max_len = max_len
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.compile_mode = compile_mode
        self._step = self._decode_step
        if compile_mode:
            self._step = torch.compile(self._decode_step, mode=compile_mode, fullgraph=True, dynamic=False)

    def _decode_step(self, token, cache_position):
        out = self.model(input_ids=token, cache_position=cache_position, past_key_values=self.cache, use_cache=True)
        return out.logits[:, -1, :].argmax(dim=-1, keepdim=True)

    def generate(self, input_ids, max_new_tokens: int, on_step: Callable[[], None] | None = None):
        """Greedy tokens after ``input_ids`` (no padding: every row has the same length). ``on_step`` is called
        after each token's step was issued (for timing), exactly like a logits processor in ``generate``."""
        torch = self.torch
        b, t = input_ids.shape
        if b != self.batch or t + max_new_tokens > self.max_len:
            raise ValueError(f"GraphedGreedy was built for batch {self.batch} and {self.max_len} positions")
        device = input_ids.device
        with torch.inference_mode():
            self.cache.reset()  # zeroes in place: the graph's captured addresses stay valid
            positions = torch.arange(t, device=device)
            logits = self.model(input_ids=input_ids, cache_position=positions, past_key_values=self.cache,
                                use_cache=True).logits
            token = logits[:, -1, :].argmax(dim=-1, keepdim=True)
            if on_step:
                on_step()
            out = [token]
            pos = torch.tensor([t], device=device, dtype=torch.long)
            for _ in range(max_new_tokens - 1):
                if self.compile_mode:
                    torch.compiler.cudagraph_mark_step_begin()
                token = self._step(token, pos).clone()
                pos += 1
                out.append(token)
                if on_step:
                    on_step()
            return torch.cat([input_ids, *out], dim=1)
