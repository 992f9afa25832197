"""A recipe: which model, which optimizations in which order, and how to bench and evaluate. Torch-free."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from workbench.core import optimizations
from workbench.core.errors import InputError
from workbench.core.optimizations.base import STAGES, TASKS

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class ModelSpec:
    ref: str
    task: str | None = None  # None: detect from the config
    trust_remote_code: bool = False
    revision: str | None = None
    device_map: str | None = None  # place the model across every visible GPU with accelerate (see DEVICE_MAPS)
    tp: int | None = None  # tensor-parallel degree: every layer split over this many processes (core/parallel/)


# accelerate's placement strategies for a model spread over several GPUs.
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
# Optimizations that work on a model spread over several GPUs (they do not move or rebuild the whole model).
DEVICE_MAP_STAGES = ("precision", "runtime")


@dataclass
class BenchSettings:
    batch: int | None = None  # None: 1 for causal LMs, 8 for encoders and classifiers
    seq_len: int = 128  # prompt tokens (causal LM) or input tokens (encoder)
    new_tokens: int = 32  # generated tokens per timed generate call (causal LM)
    warmup: int = 2
    min_iters: int = 5
    min_seconds: float = 3.0
    max_iters: int = 1000
    monitor_hz: float = 4.0
    max_seconds: float | None = None  # cap per bench (warm-up included): ends early with what it has, marked so

    LIMITS = {
        "batch": (1, 4096), "seq_len": (1, 131072), "new_tokens": (2, 65536), "warmup": (0, 1000),
        "min_iters": (1, 100000), "min_seconds": (0.0, 3600.0), "max_iters": (1, 1000000), "monitor_hz": (0.1, 100.0),
        "max_seconds": (0.01, 86400.0),
    }


@dataclass
class EvalSettings:
    source: str = "builtin"  # "builtin", a .txt/.jsonl/.csv path, "hf:NAME[:CONFIG]" (datasets), or "none"
    text_column: str = "text"
    label_column: str = "label"
    query_column: str = "query"
    document_column: str = "document"
    split: str = "test"
    token_budget: int = 4096  # causal LM: tokens scored for perplexity / KL / agreement
    window: int = 512  # causal LM: tokens per scored window
    max_samples: int = 64  # encoder / classifier: texts evaluated
    kl_topk: int = 64  # baseline log-probs kept per position for KL (plus one tail bucket)

    LIMITS = {
        "token_budget": (16, 10_000_000), "window": (8, 131072), "max_samples": (2, 1_000_000), "kl_topk": (1, 4096),
    }


@dataclass
class OptStep:
    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Recipe:
    model: ModelSpec
    optimizations: list[OptStep] = field(default_factory=list)
    bench: BenchSettings = field(default_factory=BenchSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    device: str = "auto"

    def to_dict(self) -> dict:
        return {
            "model": {k: v for k, v in asdict(self.model).items() if v is not None},
            "optimizations": [{"name": s.name, "params": dict(s.params)} for s in self.optimizations],
            "bench": {k: v for k, v in asdict(self.bench).items() if v is not None},
            "eval": asdict(self.eval),
            "device": self.device,
        }

    @classmethod
    def from_dict(cls, data: dict, where: str = "recipe") -> "Recipe":
        try:
            model = _build(ModelSpec, data.get("model") or {}, f"{where} [model]")
            if not model.ref:
                raise InputError(f"{where}: [model] ref is missing; expected a model reference")
            steps = []
            for item in data.get("optimizations") or []:
                if not isinstance(item, dict) or "name" not in item:
                    raise InputError(f"{where}: each [[optimizations]] entry needs a name")
                steps.append(OptStep(str(item["name"]), dict(item.get("params") or {})))
            return cls(
                model=model,
                optimizations=steps,
                bench=_build(BenchSettings, data.get("bench") or {}, f"{where} [bench]"),
                eval=_build(EvalSettings, data.get("eval") or {}, f"{where} [eval]"),
                device=str(data.get("device", "auto")),
            )
        except (TypeError, AttributeError) as exc:
            raise InputError(f"{where}: malformed ({exc})") from None

    def validate(self, task: str | None = None, device: str | None = None) -> "Recipe":
        """Check everything that can be checked without torch; returns a copy with parameters resolved.

        ``task`` and ``device`` (once known) also check each optimization supports them.
        """
        task = task or self.model.task
        if task is not None and task not in TASKS:
            raise InputError(f"{task}: unknown task; expected one of: {', '.join(TASKS)}", param="task")
        dev = device or self.device
        if dev.split(":")[0] not in DEVICES:
            raise InputError(f"{dev}: unknown device; expected auto, cpu, cuda or cuda:N", param="device")
        if self.model.device_map is not None:
            if self.model.device_map not in DEVICE_MAPS:
                raise InputError(f"{self.model.device_map}: unknown placement; expected one of: "
                                 f"{', '.join(DEVICE_MAPS)}", param="device_map")
            if self.device == "cpu" or self.device.startswith("cuda:"):
                raise InputError(f"{self.model.device_map}: spreads the model over every visible GPU; expected "
                                 f"device cuda or auto, not {self.device}", param="device_map")
        if self.model.tp is not None:
            from workbench.core.parallel import rules

            rules.check_recipe(self)
        _check_limits(self.bench, "bench")
        _check_limits(self.eval, "eval")
        resolved: list[OptStep] = []
        groups: dict[str, str] = {}
        last = None
        for step in self.optimizations:
            spec = optimizations.get(step.name)
            params = spec.resolve(step.params)
            if last is not None and STAGES[spec.stage] < STAGES[last.stage]:
                raise InputError(
                    f"{spec.name}: must come before {last.name} ({spec.stage} steps apply before "
                    f"{last.stage} steps: train/distill, then prune, then precision, then quantize, then runtime, "
                    f"compile last)", param="opt")
            if spec.exclusive_group:
                other = groups.get(spec.exclusive_group)
                if other:
                    raise InputError(f"{spec.name}: cannot be combined with {other} "
                                     f"(both are {spec.exclusive_group}; pick one)", param="opt")
                groups[spec.exclusive_group] = spec.name
            for prev in resolved:
                pspec = optimizations.get(prev.name)
                # the reason written by whichever declared the conflict (unless its params lift it)
                reason = spec.conflict_reason(pspec, params, prev.params, device=dev)
                if reason is not None:
                    raise InputError(f"{spec.name}: cannot be combined with {prev.name}: {reason}", param="opt")
            max_batch = spec.extra.get("max_batch")
            if max_batch is not None and (self.bench.batch or 1) > max_batch:
                raise InputError(f"{spec.name}: runs at most {max_batch} sequence(s) at a time; expected "
                                 f"batch {max_batch}, not {self.bench.batch}", param="opt")
            if self.model.device_map is not None and spec.stage not in DEVICE_MAP_STAGES:
                raise InputError(f"{spec.name}: not supported with a device_map (the model spans several "
                                 f"GPUs); expected a {' or '.join(DEVICE_MAP_STAGES)} optimization", param="opt")
            if task is not None and task not in spec.tasks:
                raise InputError(f"{spec.name}: does not apply to {task} models; "
                                 f"expected a model of task {', '.join(spec.tasks)}", param="opt")
            if dev.startswith("cuda") and "cuda" not in spec.devices or dev == "cpu" and "cpu" not in spec.devices:
                raise InputError(f"{spec.name}: does not run on {dev}; expected device "
                                 f"{' or '.join(spec.devices)}", param="opt")
            resolved.append(OptStep(spec.name, params))
            last = spec
        return Recipe(self.model, resolved, self.bench, self.eval, self.device)


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a table")
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise InputError(f"{where}: unknown key {sorted(unknown)[0]!r}; expected one of: {', '.join(sorted(names))}")
    return cls(**data)


def _check_limits(settings, section: str) -> None:
    for name, (lo, hi) in settings.LIMITS.items():
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise InputError(f"{value!r}: out of range; expected a number in [{lo}, {hi}] ({section})", param=name)


def precheck(recipe: Recipe) -> Recipe:
    """Every check that needs no torch: the model reference, the optimizations, ranges, the eval file. Returns the
    validated copy; raises InputError (with ``param``). Front ends run it before starting a job or a tune."""
    from workbench.core import data, modelref

    ref = modelref.resolve(recipe.model.ref)
    validated = recipe.validate(task=recipe.model.task or ref.task_hint)
    if validated.model.tp is not None:
        from workbench.core.measure import nvml
        from workbench.core.parallel import rules

        rules.check_model(validated, ref)
        if validated.device != "cpu" and nvml.available():
            rules.check_gpus(validated, len(nvml.devices()))
    if validated.eval.source not in ("builtin", "none") and not validated.eval.source.startswith("hf:"):
        task = recipe.model.task or ref.task_hint
        if task is None and ref.path:
            task = modelref.task_from_config_json(ref.path)
        data.load_eval(validated.eval, task or "causal-lm")
    return validated
