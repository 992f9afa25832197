"""Optimizations as data: a typed, bounded parameter list plus one apply function returning ``Applied``.

This module must stay importable without torch: the UI process, the CLI's validation and the session reader use it.
Each optimization module imports torch inside its apply function only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from workbench.core.errors import InputError

# Where in a recipe a family may apply. A recipe must be non-decreasing in stage:
# train-time changes (distill, QAT) before pruning, pruning before precision and quantization,
# quantization before runtime settings (attention, cache), compilation last.
STAGES = {
    "train": 10,
    "prune": 20,
    "precision": 30,
    "quantize": 40,
    "runtime": 50,
    "compile": 90,
}

TASKS = ("causal-lm", "encoder", "seq-cls")


@dataclass(frozen=True)
class Param:
    name: str
    type: type
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    search: tuple | None = None  # values a tuner may try
    search_cuda: tuple | None = None  # on CUDA, the values a tuner tries instead of ``search``
    search_needs: tuple = ()  # ((value, module), ...): a value a tuner tries only where its module imports

    def describe(self) -> dict:
        return {
            "name": self.name,
            "type": self.type.__name__,
            "default": self.default,
            "help": self.help,
            "min": self.min,
            "max": self.max,
            "choices": list(self.choices) if self.choices else None,
            "search": list(self.search) if self.search else None,
            "search_cuda": list(self.search_cuda) if self.search_cuda else None,
        }

    def coerce(self, opt: str, raw: Any) -> Any:
        """Turn a CLI string or a TOML/JSON value into a checked value, or raise InputError naming the input."""
        expected = self._expected()
        try:
            if self.type is bool:
                if isinstance(raw, bool):
                    value = raw
                elif str(raw).lower() in ("1", "true", "yes", "on"):
                    value = True
                elif str(raw).lower() in ("0", "false", "no", "off"):
                    value = False
                else:
                    raise ValueError
            elif self.type is int:
                if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                    raise ValueError
                value = int(raw)
            elif self.type is float:
                if isinstance(raw, bool):
                    raise ValueError
                value = float(raw)
                if value != value:  # NaN
                    raise ValueError
            else:
                value = str(raw)
        except (TypeError, ValueError):
            raise InputError(f"{opt}: {self.name}={raw!r} is not valid; expected {expected}", param="opt") from None
        if self.choices is not None and value not in self.choices:
            raise InputError(f"{opt}: {self.name}={raw!r} is not allowed; expected {expected}", param="opt")
        if self.min is not None and value < self.min or self.max is not None and value > self.max:
            raise InputError(f"{opt}: {self.name}={raw!r} is out of range; expected {expected}", param="opt")
        return value

    def _expected(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(str(c) for c in self.choices)
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[self.type]
        if self.min is not None and self.max is not None:
            return f"{kind} in [{self.min}, {self.max}]"
        if self.min is not None:
            return f"{kind} >= {self.min}"
        if self.max is not None:
            return f"{kind} <= {self.max}"
        return kind


# The tuner's cost class of a step by its stage (cheap and usually promising first, training last); an
# optimization whose cost differs from its stage's sets ``cost`` itself.
STAGE_COST = {"precision": 0.0, "quantize": 0.1, "runtime": 0.2, "prune": 1.0, "compile": 2.0, "train": 3.5}


@dataclass(frozen=True)
class WeightStorage:
    """How a step stores the Linear weights it leaves behind: what the recommender's memory estimate counts for
    them before anything runs (bytes per weight, plus scales per output row or per group)."""

    format: str  # named in the estimate ("int8-dynamic:per-channel", "int4-weight-only", ...)
    bytes_per_weight: float
    bytes_per_row: float = 0.0  # scales / zero points per output row
    bytes_per_group: float = 0.0  # scales / zero points per group of ``group_size`` weights (int4)
    kept_fraction: float = 1.0  # share of the Linear weights stored this way; the rest stay in the float dtype
    float_bytes: float | None = None  # bytes per element of the other weights where the step recasts them (bf16: 2)

    def bytes_per_param(self, group_size: int = 128, row_len: int = 1024) -> float:
        return self.bytes_per_weight + self.bytes_per_row / max(1, row_len) + self.bytes_per_group / group_size

    def describe(self) -> dict:
        return asdict(self)


@dataclass
class Applied:
    """What an optimization's apply function returns."""

    model: Any  # the model to continue with (the same object, or a replacement such as a student or a runtime wrapper)
    report: dict = field(default_factory=dict)  # what the step did (bytes, sparsity, layers ...): its report


@dataclass(frozen=True)
class OptSpec:
    name: str
    family: str
    stage: str
    summary: str
    params: tuple[Param, ...]
    apply: Callable[..., Applied]  # apply(model, params, ctx)
    tasks: tuple[str, ...] = TASKS
    devices: tuple[str, ...] = ("cpu", "cuda")
    # where tune searches it (None: every device it runs on) and why not elsewhere (runs there, but cannot win)
    tune_devices: tuple[str, ...] | None = None
    tune_reason: str = ""
    exportable: str = "yes"  # "yes": plain transformers; "custom": optbench format + loader; "no"
    export_reason: str = ""  # with exportable "no": why (``run --export`` refuses before loading with it)
    # param -> {value: why}: parameter values with no saved form (kernel=gemlite), refused like exportable "no"
    unexportable_params: dict[str, dict] = field(default_factory=dict)
    exclusive_group: str | None = None  # at most one optimization of a group per recipe
    # optimization name -> why the two cannot be in one recipe (either side may declare it). A tuple of names is
    # accepted too (reason: extra["conflict_reason"], else "they are incompatible").
    conflicts: dict[str, str] = field(default_factory=dict)
    # optimization name -> {param: value or tuple of values}: the declared conflict does not hold when this step's
    # params have those values (speculative:method=prompt-lookup runs inside graph-decode's loop; method=draft
    # does not)
    conflicts_unless: dict[str, dict] = field(default_factory=dict)
    # optimization name -> why the two cannot be in one recipe on CUDA (a kernel path CPU has and CUDA lacks);
    # checked once the device is known to be CUDA
    cuda_conflicts: dict[str, str] = field(default_factory=dict)
    requires: tuple[str, ...] = ()  # importable modules it needs (e.g. "torchao")
    notes: str = ""
    extra: dict = field(default_factory=dict)
    # Facts other modules decide by (instead of naming optimizations):
    cost: float | None = None  # the tuner's cost class; None: STAGE_COST of its stage
    quantizes_activations: bool = False  # rounds activations to a grid at run time: export checks use a looser bound
    precision: str | None = None  # "bf16" | "fp16": the float dtype the model runs in after this step
    # model_reason(params, model) -> why this step does nothing or cannot run on that model (``model``: the loaded
    # model's facts, as models.describe reports them: dtype, ...), or None. Known only after loading: tune skips
    # such candidates once its baseline has loaded the model.
    model_reason: Callable[[dict, dict], str | None] | None = None
    # the Linear weights' storage after this step, or a function of the step's (given) params returning it
    weights: WeightStorage | Callable[[dict], WeightStorage | None] | None = None
    # tensor parallelism (every layer split over processes as DTensor shards: core/parallel/): whether this step
    # composes with it, and when it does not, why (the refusal before launching says it)
    tp_ok: bool = False
    tp_reason: str = "not verified on a tensor-parallel model (DTensor shards)"

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra", dict(self.extra))  # specs registered from one shared dict stay apart
        if not isinstance(self.conflicts, dict):
            reason = self.extra.get("conflict_reason") or "they are incompatible"
            object.__setattr__(self, "conflicts", {name: reason for name in self.conflicts})
        if self.cost is None:
            object.__setattr__(self, "cost", STAGE_COST.get(self.stage, 0.0))

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def conflict_reason(self, other: OptSpec, params: dict | None = None,
                        other_params: dict | None = None, device: str | None = None) -> str | None:
        """Why this optimization (with ``params``) and ``other`` (with ``other_params``) cannot be in one recipe
        (declared by either, unless the declaring side's ``conflicts_unless`` lifts it; on a ``device`` known to be
        CUDA also either side's ``cuda_conflicts``), or None if they can."""
        cuda = device is not None and str(device).startswith("cuda")
        for spec, mine, name in ((self, params, other.name), (other, other_params, self.name)):
            if name in spec.conflicts:
                lift = spec.conflicts_unless.get(name)
                if lift and mine is not None and all(mine.get(k) == v or (isinstance(v, tuple) and mine.get(k) in v)
                                                     for k, v in lift.items()):
                    continue
                return spec.conflicts[name]
            if cuda and name in spec.cuda_conflicts:
                return f"on CUDA, {spec.cuda_conflicts[name]}"
        return None

    def weight_storage(self, params: dict | None = None) -> WeightStorage | None:
        """The Linear weights' storage after this step with ``params`` (as given: defaults are not filled in)."""
        if callable(self.weights):
            return self.weights(dict(params or {}))
        return self.weights

    def export_refusal(self, params: dict[str, Any]) -> str | None:
        """Why a step with these params cannot be exported (known before loading), or None."""
        if self.exportable == "no":
            return self.export_reason or "it has no saved form"
        for name, values in self.unexportable_params.items():
            if params.get(name) in values:
                return f"{name}={params[name]}: {values[params[name]]}"
        return None

    def resolve(self, given: dict[str, Any]) -> dict[str, Any]:
        """Defaults filled in, every given value checked. Unknown names are an InputError."""
        known = {p.name for p in self.params}
        for key in given:
            if key not in known:
                names = ", ".join(sorted(known)) or "none"
                raise InputError(f"{self.name}: unknown parameter {key!r}; expected one of: {names}",
                                 param="opt")
        return {p.name: (p.coerce(self.name, given[p.name]) if p.name in given else p.default) for p in self.params}

    def describe(self) -> dict:
        storage = self.weight_storage({})
        return {
            "name": self.name,
            "family": self.family,
            "stage": self.stage,
            "summary": self.summary,
            "tasks": list(self.tasks),
            "devices": list(self.devices),
            "exportable": self.exportable,
            "exclusive_group": self.exclusive_group,
            "conflicts": list(self.conflicts),
            "conflict_reasons": dict(self.conflicts),
            "conflicts_unless": dict(self.conflicts_unless),
            "requires": list(self.requires),
            "cost": self.cost,
            "quantizes_activations": self.quantizes_activations,
            "precision": self.precision,
            "weights": storage.describe() if storage is not None else None,
            "tp_ok": self.tp_ok,
            "tp_reason": None if self.tp_ok else self.tp_reason,
            "notes": self.notes,
            "params": [p.describe() for p in self.params],
        }


_REGISTRY: dict[str, OptSpec] = {}


def register(*, name: str, family: str, stage: str, summary: str, params: tuple[Param, ...] = (), **kw: Any):
    """Decorator over an ``apply(model, params, ctx) -> Applied(model, report)`` function; ``kw``: the other
    ``OptSpec`` fields."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")

    def deco(fn: Callable[..., Applied]) -> Callable[..., Applied]:
        if name in _REGISTRY:
            raise ValueError(f"optimization {name!r} registered twice")
        _REGISTRY[name] = OptSpec(name=name, family=family, stage=stage, summary=summary, params=tuple(params),
                                  apply=fn, **kw)
        return fn

    return deco


def registry() -> dict[str, OptSpec]:
    return _REGISTRY
