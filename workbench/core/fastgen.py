"""Greedy decoding with a static KV cache and the whole decode step replayed as one CUDA graph.

transformers' ``generate`` spends milliseconds per token in Python around the forward pass (logits processors,
stopping criteria, cache bookkeeping, host syncs), so at batch 1 it cannot approach the memory-bandwidth roofline
however fast the forward is. Measured on an H200 (benchmarks/results): even ``torch.compile(mode="reduce-overhead")``
around the step costs about 1.5 ms of host time per token (CUDA-graph-tree bookkeeping and guards over hundreds of
parameters), the same for a 135 M and a 1.2 B model — a host floor, not a memory one.

So this loop compiles the step (forward + argmax + advancing its own position) without CUDA graphs, captures one
step into a ``torch.cuda.CUDAGraph`` whose inputs and outputs are static buffers, and replays it: a replay is one
host call. The KV cache is transformers' ``StaticCache`` (fixed addresses). Prefill runs eagerly once per call.
If capture fails (a model with a host sync inside its forward), it falls back to compile's own CUDA graphs
(``reduce-overhead``), cloning each output before the next replay (without the clone that mode fails with
"accessing tensor output of CUDAGraphs that has been overwritten").

On CPU the same loop runs eagerly, which is how its tokens are checked against ``generate``.

Two knobs aimed at the kernels themselves (at batch 1 the step is bound by GEMV-shaped matmuls, which cuBLAS runs
at well under the HBM roofline on small matrices — benchmarks/results/gpu_diag_*.json):
``tuning="coordinate-descent"`` lets inductor tune its Triton kernels' block sizes by coordinate descent, and
``gemv=True`` rewrites every plain ``nn.Linear`` that sees a single row (the decode step at batch 1) as a
broadcast-multiply + sum, which inductor turns into one fused Triton reduction kernel reading the weight once
(accumulating in fp32); prefill and batches keep ``F.linear``. Both only change how the step is compiled.
"""

from __future__ import annotations

from typing import Callable

MODES = ("graph", "reduce-overhead", "eager")
TUNINGS = ("none", "coordinate-descent")


def _gemv_forward(self, x):
    """nn.Linear.forward, with a single input row computed as a reduction (see the module docstring)."""
    import torch

    if x.numel() == x.shape[-1]:
        out = (x.unsqueeze(-2) * self.weight).sum(-1)
        return out + self.bias if self.bias is not None else out
    return torch.nn.functional.linear(x, self.weight, self.bias)


def use_gemv(model) -> int:
    """Give every plain nn.Linear with an ordinary weight tensor the GEMV forward; returns how many."""
    import types

    import torch

    n = 0
    for mod in model.modules():
        if type(mod) is torch.nn.Linear and type(mod.weight.data) is torch.Tensor:  # not quantized subclasses
            mod.forward = types.MethodType(_gemv_forward, mod)
            n += 1
    return n


class GraphedGreedy:
    def __init__(self, model, batch: int, max_len: int, mode: str = "graph", compile_mode: str = "default",
                 log: Callable[[str], None] | None = None, tuning: str = "none", gemv: bool = False) -> None:
        import torch
        from transformers import StaticCache

        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.torch = torch
        self.model = model
        self.batch = batch
        self.max_len = max_len
        self.log = log or (lambda text: None)
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.mode = mode
        self.graph = None
        self._tok = self._pos = None
        if tuning not in TUNINGS:
            raise ValueError(f"tuning must be one of {TUNINGS}")
        if gemv and mode != "eager":
            self.log(f"graph-decode: GEMV forward on {use_gemv(model)} Linear layers")
        if mode == "graph":
            if tuning == "coordinate-descent":  # torch.compile takes a mode or options, not both
                options = {"coordinate_descent_tuning": True}
                if compile_mode.startswith("max-autotune"):
                    options.update({"max_autotune": True, "triton.cudagraphs": False})
                self._step = torch.compile(self._decode_step, options=options, fullgraph=True, dynamic=False)
            else:
                self._step = torch.compile(self._decode_step, mode=compile_mode, fullgraph=True, dynamic=False)
        elif mode == "reduce-overhead":
            self._step = torch.compile(self._decode_step, mode="reduce-overhead", fullgraph=True, dynamic=False)
        else:
            self._step = self._decode_step

    def _decode_step(self, token, cache_position):
        out = self.model(input_ids=token, cache_position=cache_position, past_key_values=self.cache, use_cache=True)
        return out.logits[:, -1, :].argmax(dim=-1, keepdim=True)

    def _graph_body(self) -> None:
        """One decode step on the static buffers: next token into _tok, position advanced."""
        self._tok.copy_(self._step(self._tok, self._pos))
        self._pos.add_(1)

    def _capture(self, token, pos) -> bool:
        torch = self.torch
        self._tok, self._pos = token.clone(), pos.clone()
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):  # compile, autotune and allocate before capture
                    self._graph_body()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._graph_body()
        except Exception as exc:  # noqa: BLE001 - any capture failure means: use compile's own graphs
            self.log(f"graph-decode: CUDA graph capture failed ({type(exc).__name__}: {str(exc)[:160]}); "
                     f"falling back to torch.compile(mode='reduce-overhead')")
            torch.cuda.synchronize()
            self.mode = "reduce-overhead"
            self._step = torch.compile(self._decode_step, mode="reduce-overhead", fullgraph=True, dynamic=False)
            return False
        self.graph = graph
        return True

    def generate(self, input_ids, max_new_tokens: int, on_step: Callable[[], None] | None = None):
        """Greedy tokens after ``input_ids`` (every row the same length, no padding). ``on_step`` is called after
        each token's step was issued (for timing), exactly like a logits processor inside ``generate``."""
        torch = self.torch
        b, t = input_ids.shape
        if b != self.batch or t + max_new_tokens > self.max_len:
            raise ValueError(f"GraphedGreedy was built for batch {self.batch} and {self.max_len} positions")
        device = input_ids.device
        with torch.inference_mode():
            self.cache.reset()  # zeroes in place: captured addresses stay valid
            logits = self.model(input_ids=input_ids, cache_position=torch.arange(t, device=device),
                                past_key_values=self.cache, use_cache=True).logits
            token = logits[:, -1, :].argmax(dim=-1, keepdim=True)
            pos = torch.tensor([t], device=device, dtype=torch.long)
            if self.mode == "graph" and self.graph is None and device.type == "cuda":
                self._capture(token, pos)
                # The warm-up steps before capture advanced the cache's own counters (transformers keeps a
                # cumulative length per layer): start this call again from a clean cache.
                self.cache.reset()
                logits = self.model(input_ids=input_ids, cache_position=torch.arange(t, device=device),
                                    past_key_values=self.cache, use_cache=True).logits
                token = logits[:, -1, :].argmax(dim=-1, keepdim=True)
            if on_step:
                on_step()
            out = [token]
            if self.graph is not None:
                self._tok.copy_(token)
                self._pos.copy_(pos)
                for _ in range(max_new_tokens - 1):
                    self.graph.replay()
                    out.append(self._tok.clone())
                    if on_step:
                        on_step()
            else:
                for _ in range(max_new_tokens - 1):
                    if self.mode == "reduce-overhead":
                        torch.compiler.cudagraph_mark_step_begin()
                    token = self._step(token, pos).clone()
                    pos += 1
                    out.append(token)
                    if on_step:
                        on_step()
            return torch.cat([input_ids, *out], dim=1)
