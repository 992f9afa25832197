"""The run report, typed: what ``optbench run --json`` prints, a session's ``results.json`` keeps per run, and the
``result`` event of phase ``final`` carries. Torch-free.

``RunReport.from_dict(doc)`` reads a report (keys this version does not know are kept in ``extra`` and written back),
``to_dict()`` writes the JSON document, unchanged from what the pipeline always wrote. The README's schema section
is generated from these classes (``python -m workbench.core.report``) and a test keeps the two equal.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from typing import Any

SCHEMA = 1


class _Absent:
    """A key the document did not have (written back as absent, not as null)."""

    def __repr__(self) -> str:
        return "absent"


_ABSENT: Any = _Absent()


def doc(text: str):
    """A field with its meaning (the README's schema shows it). A field not given stays absent: ``to_dict`` leaves
    it out rather than writing a null the document never had."""
    return field(default=_ABSENT, metadata={"doc": text})


class _Typed:
    """from_dict/to_dict for a flat dataclass whose fields may be other ``_Typed`` classes; unknown keys go to
    ``extra`` (in their order) and come back after the known ones."""

    extra: dict

    @classmethod
    def from_dict(cls, d: dict | None):
        if d is None:
            return None
        hints = typing.get_type_hints(cls)
        known, extra = {}, {}
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        for key, value in d.items():
            if key not in names:
                extra[key] = value
                continue
            sub, of = _typed_class(hints[key]), _typed_class(_dict_value(hints[key]))
            if sub is not None and isinstance(value, dict):
                value = sub.from_dict(value)
            elif of is not None and isinstance(value, dict):
                value = {k: of.from_dict(v) if isinstance(v, dict) else v for k, v in value.items()}
            known[key] = value
        return cls(**known, extra=extra)

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is _ABSENT:
                continue
            if isinstance(value, _Typed):
                value = value.to_dict()
            elif isinstance(value, dict) and value and all(isinstance(v, _Typed) for v in value.values()):
                value = {k: v.to_dict() for k, v in value.items()}
            out[f.name] = value
        out.update(self.extra)
        return out




def _typed_class(hint) -> type | None:
    """The report class of ``hint`` or of an ``X | None`` hint (not of a dict's values)."""
    if typing.get_origin(hint) is dict:
        return None
    for t in (hint, *typing.get_args(hint)):
        if isinstance(t, type) and issubclass(t, _Typed):
            return t
    return None


def _dict_value(hint):
    for t in (hint, *typing.get_args(hint)):
        if typing.get_origin(t) is dict:
            return typing.get_args(t)[1]
    return None


@dataclass
class Stats(_Typed):
    """Summary of repeated timings, in milliseconds."""

    mean: float = doc("mean")
    p50: float = doc("median: every speedup is a ratio of medians measured in the same run")
    p90: float = doc("90th percentile")
    p99: float = doc("99th percentile")
    std: float = doc("standard deviation")
    min: float = doc("fastest call")
    max: float = doc("slowest call")
    count: int = doc("timed calls")
    samples: list = doc("every timed call (the Results pane's histogram); absent in live events")
    extra: dict = field(default_factory=dict)


@dataclass
class Throughput(_Typed):
    value: float = doc("per second")
    unit: str = doc('"decode tokens/s" (causal LMs) or "samples/s"')
    extra: dict = field(default_factory=dict)


@dataclass
class Memory(_Typed):
    """Peaks during the phase's benchmark, in MB; null where the machine has no such counter."""

    rss_peak: float | None = doc("the job process's resident memory")
    cuda_peak_allocated: float | None = doc("torch's peak allocated CUDA memory")
    cuda_peak_reserved: float | None = doc("torch's peak reserved CUDA memory")
    nvml_used: float | None = doc("NVML's used GPU memory, summed over GPUs")
    cuda_peak_allocated_per_device: dict | None = doc("device_map runs: torch's peak per GPU; absent otherwise")
    per_rank: list | None = doc("tensor-parallel runs: each rank's peaks (rank 0 first); absent otherwise")
    extra: dict = field(default_factory=dict)


@dataclass
class Phase(_Typed):
    """One model state measured: the baseline, or the model after the optimizations."""

    latency_ms: Stats = doc("one full call: generate (prompt + new tokens) for causal LMs, a forward otherwise")
    ttft_ms: Stats | None = doc("time to first token (causal LMs; null otherwise)")
    decode_ms_per_token: Stats | None = doc("decode time per new token (causal LMs; null otherwise)")
    throughput: Throughput = doc("at the benchmark's batch size")
    settings: dict = doc("batch, seq_len, new_tokens, greedy: what was timed")
    cold_start_ms: float | None = doc("the first call (compilation and caches included)")
    warmup_runs: int | None = doc("untimed calls before timing")
    timed_seconds: float | None = doc("wall time of the timed calls")
    stopped_early: str | None = doc('"max_seconds" when the bench hit its time cap before min_iters/min_seconds '
                                    "(fewer calls than asked: a rougher median); absent otherwise")
    memory_mb: Memory = doc("memory peaks")
    model_size_mb: float = doc("bytes of parameters and buffers / 1e6")
    dtype: str = doc("dtype of the first parameter")
    eval_seconds: float | None = doc("time the accuracy evaluation took")
    metrics: dict = doc("the task's accuracy metrics (perplexity, next_token_agreement, kl_divergence; cosine, "
                        "recall@1; accuracy)")
    accuracy_cached: bool | None = doc("baseline only: its metrics came from the baseline cache")
    extra: dict = field(default_factory=dict)


@dataclass
class AccuracyDelta(_Typed):
    value: float = doc("the optimized model's value")
    baseline: float = doc("the baseline's value")
    delta: float = doc("value − baseline")
    higher_is_better: bool = doc("the metric's direction")
    extra: dict = field(default_factory=dict)


@dataclass
class RunReport(_Typed):
    """One run: a baseline and an optimized model, measured side by side."""

    schema: int = doc("report format version")
    model: dict = doc("ref, source, path, gguf_file, architecture, model_type, task, parameters, dtype, size_mb, "
                      "layers, hidden_size, heads, vocab_size, device, fingerprint (and tp in tensor-parallel runs)")
    task: str = doc('"causal-lm", "encoder" or "seq-cls"')
    device: str = doc('"cpu", "cuda" or "cuda:N"')
    environment: dict = doc("optbench, python, platform, cpu, cpu_isa, cpu_count, memory_gb, torch, transformers, "
                            "torchao, driver, device, device_name, torch_threads, cuda, gpus, compute_capability; tp, "
                            "tp_backend, tp_devices in tensor-parallel runs")
    optimizations: list = doc("[{name, params}] in apply order")
    optimization_reports: list = doc("[{name, params, seconds, exportable, ... what changed: bytes, sparsity, "
                                     "layers}]")
    bench: dict = doc("batch, seq_len, new_tokens, warmup, min_iters, min_seconds, max_iters, max_seconds, "
                      "monitor_hz")
    eval: dict = doc("source, data_sha256 (of the evaluated text), token_budget, window, max_samples, kl_topk, "
                     "columns")
    baseline: Phase = doc("the model as loaded")
    optimized: Phase = doc("after the optimizations (the baseline itself when there are none)")
    accuracy: dict[str, AccuracyDelta] = doc("metric → its change")
    speedup: float = doc("baseline latency p50 / optimized latency p50")
    size_ratio: float = doc("optimized model_size_mb / baseline model_size_mb")
    load_seconds: float = doc("loading the model")
    estimate_mb: float | None = doc("the memory estimate made before loading")
    memory_estimate: dict | None = doc("the estimate against the measured peak")
    monitor_samples: int = doc("monitor readings taken during the run")
    started: float = doc("unix time the run started")
    seconds: float = doc("the whole run")
    export: dict | None = doc("verified, max_rel_error, tolerance, path, format, bytes_on_disk (null without an "
                              "artifact)")
    extra: dict = field(default_factory=dict)


def schema_markdown() -> str:
    """The README's JSON report section body: one table per class."""
    lines = []
    for cls in (RunReport, Phase, Stats, Throughput, Memory, AccuracyDelta):
        title = {"RunReport": "The report", "Phase": "`baseline` and `optimized`",
                 "Stats": "Timings (`latency_ms`, `ttft_ms`, `decode_ms_per_token`)", "Throughput": "`throughput`",
                 "Memory": "`memory_mb`", "AccuracyDelta": "`accuracy` entries"}[cls.__name__]
        lines += [f"**{title}**" + (f" — {cls.__doc__.strip()}" if cls.__doc__ else ""), "",
                  "| key | type | meaning |", "|---|---|---|"]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name == "extra":
                continue
            lines.append(f"| `{f.name}` | {_type_text(hints[f.name])} | {f.metadata.get('doc', '')} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _type_text(hint) -> str:
    names = {str: "string", int: "int", float: "float", bool: "bool", dict: "object", list: "array",
             type(None): "null"}
    if isinstance(hint, type):
        return names.get(hint, hint.__name__)
    if typing.get_origin(hint) is dict:
        return f"object of {_type_text(typing.get_args(hint)[1])}"
    args = typing.get_args(hint)
    return " or ".join(_type_text(a) for a in args) if args else str(hint)


if __name__ == "__main__":
    sys.stdout.write(schema_markdown())
