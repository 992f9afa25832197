"""Latency benchmarks of a model's real work, following MEASUREMENT.md.

Causal LMs: one greedy ``generate`` call per sample with min_new_tokens == max_new_tokens; a logits processor
stamps every step, so time-to-first-token (prefill) and per-token decode latency come from the same call.
Encoders / classifiers: one forward pass per sample. CPU timing uses perf_counter_ns; CUDA uses event pairs and
synchronizes before reading. Warm-up runs are excluded; the first one is reported as the cold start.
"""

from __future__ import annotations

import time
from typing import Callable

from workbench.core.measure.stats import summarize


class _Clock:
    """Host clock on CPU, CUDA events on a GPU. ``mark()`` returns an opaque stamp; ``ms(a, b)`` the interval."""

    def __init__(self, device: str) -> None:
        import torch

        self.cuda = device.startswith("cuda")
        self.torch = torch
        self.device = device

    def reset(self) -> None:
        """Start of a timed run: events are reused from a pool, so stamping a step costs one record call
        (creating a CUDA event per step costs tens of microseconds and would bias per-token figures)."""
        self._next = 0

    def mark(self):
        if self.cuda:
            pool = self.__dict__.setdefault("_pool", [])
            i = self.__dict__.get("_next", 0)
            if i == len(pool):
                pool.append(self.torch.cuda.Event(enable_timing=True))
            self._next = i + 1
            pool[i].record()
            return pool[i]
        return time.perf_counter_ns()

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def ms(self, a, b) -> float:
        if self.cuda:
            return a.elapsed_time(b)
        return (b - a) / 1e6


def fixed_input_ids(tokenizer, batch: int, length: int):
    """``batch`` copies of the first ``length`` tokens of the built-in text (repeated if it is shorter)."""
    import torch

    from workbench.core.data import builtin_text

    ids = tokenizer(builtin_text()[: max(4000, length * 16)], add_special_tokens=False)["input_ids"]
    while len(ids) < length:
        ids = ids + ids
    row = torch.tensor(ids[:length], dtype=torch.long)
    return row.unsqueeze(0).repeat(batch, 1)


def _loop(run_once: Callable[[], dict], settings, on_progress: Callable[..., None] | None) -> tuple[list, dict]:
    """Warm up, then run until both min_iters and min_seconds are met (capped at max_iters).

    ``settings.max_seconds`` (None: no cap) ends the timed loop early, with at least one timed call, once warm-up and
    timing together took that long; the phase then says ``stopped_early: "max_seconds"``. ``on_progress(fraction,
    calls=, seconds_per_call=, eta_s=)`` after every call: what the Live pane shows.

    Under tensor parallelism every rank runs this loop and each call's collectives pair up across ranks, so every
    decision read from a clock is rank 0's, broadcast (``group.agree``): ranks that stopped at different calls would
    wait for each other forever."""
    from workbench.core.parallel.group import agree

    cap = getattr(settings, "max_seconds", None)
    began = time.perf_counter()
    cold = None
    warm_ms = []
    for i in range(max(1, settings.warmup)):
        t0 = time.perf_counter()
        run_once()
        elapsed = (time.perf_counter() - t0) * 1000
        if i == 0:
            cold = elapsed
        warm_ms.append(elapsed)
        if cap is not None and agree(time.perf_counter() - began >= cap):
            break
    results = []
    stopped = None
    start = time.perf_counter()
    while True:
        results.append(run_once())
        spent = time.perf_counter() - start
        per_call = spent / len(results)
        need = max(settings.min_iters - len(results), 0) * per_call
        left = min(max(need, settings.min_seconds - spent, 0.0), (settings.max_iters - len(results)) * per_call)
        if cap is not None:
            left = max(0.0, min(left, cap - (time.perf_counter() - began)))
        if on_progress is not None:
            frac_iters = len(results) / settings.min_iters
            frac_time = spent / settings.min_seconds if settings.min_seconds > 0 else 1.0
            on_progress(min(1.0, min(frac_iters, frac_time)), calls=len(results), seconds_per_call=per_call,
                        eta_s=left)
        code = 0  # 0: go on, 1: done, 2: capped by max_seconds
        if len(results) >= settings.min_iters and spent >= settings.min_seconds:
            code = 1
        elif len(results) >= settings.max_iters:
            code = 1
        elif cap is not None and time.perf_counter() - began >= cap:
            code = 2
        code = agree(code)
        if code == 2:
            stopped = "max_seconds"
        if code:
            break
    meta = {"cold_start_ms": cold, "warmup_runs": len(warm_ms), "timed_seconds": time.perf_counter() - start}
    if stopped:
        meta["stopped_early"] = stopped
    return results, meta


def bench_causal(model, tokenizer, settings, device: str, on_progress=None, generate_kwargs=None,
                 prompt_ids=None) -> dict:
    """``prompt_ids`` ([batch, len] token ids) replaces the built-in prompt (benchmarks of prompt-dependent methods,
    e.g. speculative decoding's prompt lookup); ``settings.batch`` / ``seq_len`` then follow it."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    clock = _Clock(device)
    if prompt_ids is not None:
        ids = prompt_ids.to(device)
        batch = ids.shape[0]
    else:
        batch = settings.batch or 1
        ids = fixed_input_ids(tokenizer, batch, settings.seq_len).to(device)
    mask = torch.ones_like(ids)
    n_new = settings.new_tokens

    class StepStamp(LogitsProcessor):
        """Called once per generated token, right after that step's forward pass was issued."""

        def __init__(self) -> None:
            self.stamps = []

        def __call__(self, input_ids, scores):
            self.stamps.append(clock.mark())
            return scores

        def tokens(self, n: int = 1) -> None:
            """``n`` tokens handed out at once (a speculative round): one stamp, theirs alike — a stamp per token
            would add its own host time to every round of a loop that waits for the device."""
            self.stamps.extend([clock.mark()] * n)

    extra = dict(generate_kwargs or {})
    factory = extra.pop("optbench_generator", None)  # a custom decode loop (graph-decode) replaces generate
    extra = {k: v for k, v in extra.items() if not k.startswith("optbench_")}  # steps' notes to each other
    generator = factory(batch, ids.shape[1] + n_new) if factory else None

    def run_once() -> dict:
        stamp = StepStamp()
        clock.reset()
        with torch.inference_mode():
            clock.sync()
            start = clock.mark()
            if generator is not None:
                out = generator.generate(ids, n_new, on_step=stamp.tokens)
            else:
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n_new,
                                     min_new_tokens=n_new, do_sample=False, num_beams=1,
                                     logits_processor=LogitsProcessorList([stamp]),
                                     pad_token_id=tokenizer.pad_token_id, **extra)
            end = clock.mark()
            clock.sync()
        produced = out.shape[1] - ids.shape[1]
        if produced != n_new or len(stamp.stamps) != n_new:
            raise RuntimeError(f"generate produced {produced} tokens ({len(stamp.stamps)} steps), expected {n_new}")
        ttft = clock.ms(start, stamp.stamps[0])
        decode_total = clock.ms(stamp.stamps[0], stamp.stamps[-1])
        return {"latency": clock.ms(start, end), "ttft": ttft, "decode": decode_total / (n_new - 1),
                "decode_total": decode_total}

    results, meta = _loop(run_once, settings, on_progress)
    decode_seconds = sum(r["decode_total"] for r in results) / 1000
    tokens = batch * (n_new - 1) * len(results)
    return {
        "latency_ms": summarize([r["latency"] for r in results]),
        "ttft_ms": summarize([r["ttft"] for r in results]),
        "decode_ms_per_token": summarize([r["decode"] for r in results]),
        "throughput": {"value": tokens / decode_seconds if decode_seconds > 0 else None,
                       "unit": "decode tokens/s"},
        "settings": {"batch": batch, "seq_len": int(ids.shape[1]), "new_tokens": n_new, "greedy": True},
        **meta,
    }


def bench_forward(model, tokenizer, settings, device: str, on_progress=None) -> dict:
    import torch

    clock = _Clock(device)
    batch = settings.batch or 8
    ids = fixed_input_ids(tokenizer, batch, settings.seq_len).to(device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def run_once() -> dict:
        clock.reset()
        with torch.inference_mode():
            clock.sync()
            start = clock.mark()
            model(**inputs)
            end = clock.mark()
            clock.sync()
        return {"latency": clock.ms(start, end)}

    results, meta = _loop(run_once, settings, on_progress)
    total_s = sum(r["latency"] for r in results) / 1000
    return {
        "latency_ms": summarize([r["latency"] for r in results]),
        "ttft_ms": None,
        "decode_ms_per_token": None,
        "throughput": {"value": batch * len(results) / total_s if total_s > 0 else None, "unit": "samples/s"},
        "settings": {"batch": batch, "seq_len": settings.seq_len},
        **meta,
    }


def bench(model, tokenizer, task: str, settings, device: str, on_progress=None, generate_kwargs=None) -> dict:
    if task == "causal-lm":
        return bench_causal(model, tokenizer, settings, device, on_progress, generate_kwargs)
    return bench_forward(model, tokenizer, settings, device, on_progress)
