"""What the user has set up in the UI, as plain data (no widgets): the model, the optimizations switched on with
their raw parameter text, bench/eval settings. It builds a core ``Recipe`` and asks the core to validate it; it
holds no optimization knowledge of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from workbench.core import optimizations
from workbench.core.errors import InputError
from workbench.core.measure.cpu import describe, precision_warning
from workbench.core.optimizations.base import STAGES
from workbench.core.recipe import BenchSettings, EvalSettings, ModelSpec, OptStep, Recipe

# Bench/eval fields offered in the settings panel (the rest keep the core's defaults).
BENCH_FIELDS = ("batch", "seq_len", "new_tokens", "warmup", "min_iters", "min_seconds", "max_seconds",
                "monitor_hz")
OPTIONAL_FIELDS = ("batch", "max_seconds")  # empty: None (the core's default per task; no cap)
EVAL_FIELDS = ("source", "token_budget", "window", "max_samples")


_ISA: dict = {}


def _cpu_isa() -> dict:
    """This CPU's instruction sets, read once (a key press must not reread /proc/cpuinfo)."""
    if not _ISA:
        _ISA.update(describe())
    return _ISA


@dataclass
class Workbench:
    model_ref: str | None = None
    task: str | None = None  # detected (torch-free guess, then the job's answer)
    device: str = "auto"
    bench: BenchSettings = field(default_factory=BenchSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    enabled: list[str] = field(default_factory=list)  # in the order they were switched on
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # raw values as typed, per optimization
    budget_pct: float = 1.0  # accuracy budget: the worst tolerated relative change of a metric, in percent
    save_artifact: bool = True

    # ---- optimizations
    def set_enabled(self, name: str, on: bool) -> None:
        optimizations.get(name)  # unknown names are an InputError
        if on and name not in self.enabled:
            self.enabled.append(name)
        elif not on and name in self.enabled:
            self.enabled.remove(name)

    def set_param(self, name: str, param: str, raw: Any) -> None:
        self.params.setdefault(name, {})[param] = raw

    def steps(self, enabled: list[str] | None = None) -> list[OptStep]:
        """Enabled optimizations in the order they will apply: by stage (the core's rule), then as switched on."""
        enabled = self.enabled if enabled is None else enabled
        specs = {n: optimizations.get(n) for n in enabled}
        order = sorted(enabled, key=lambda n: (STAGES[specs[n].stage], enabled.index(n)))
        return [OptStep(n, self._given(n)) for n in order]

    def _given(self, name: str) -> dict[str, Any]:
        """Only the values the user changed from the default (so the recipe stays short and readable)."""
        spec = optimizations.get(name)
        out = {}
        for key, raw in self.params.get(name, {}).items():
            p = spec.param(key)
            if p is None:
                continue
            if isinstance(raw, str) and raw.strip() == "":
                continue  # an empty field means "default"
            try:
                if p.coerce(name, raw) == p.default:
                    continue
            except InputError:
                pass  # keep it: validate() names the bad value
            out[key] = raw
        return out

    # ---- recipe
    def recipe(self) -> Recipe:
        if not self.model_ref:
            raise InputError("no model: type a demo name, a folder, a .gguf file or a Hugging Face id first")
        return Recipe(ModelSpec(self.model_ref), self.steps(), replace(self.bench), replace(self.eval), self.device)

    def check(self) -> tuple[Recipe | None, str | None]:
        """(validated recipe, None) or (None, a one-line reason) — the core's validator, before anything runs."""
        try:
            return self.recipe().validate(task=self.task), None
        except InputError as exc:
            return None, exc.message

    def hardware_warning(self) -> str | None:
        """A one-line warning about this machine for a valid recipe (bf16 where the CPU has no native bf16)."""
        if "bf16" not in self.enabled or self.params.get("bf16", {}).get("mode") == "autocast":
            return None
        device = self.device
        if device == "auto":
            from workbench.core.measure import nvml

            device = "cuda" if nvml.devices() else "cpu"
        return precision_warning(["bf16"], device, _cpu_isa())

    def problem(self, enabled: list[str]) -> str | None:
        """Why the optimizations ``enabled`` (with the settings) do not make a valid recipe, or None."""
        recipe = Recipe(ModelSpec(self.model_ref or "unset"), self.steps(enabled), self.bench, self.eval, self.device)
        try:
            recipe.validate(task=self.task)
        except InputError as exc:
            return exc.message
        return None

    def blocked_reason(self, name: str) -> str | None:
        """Why switching ``name`` on would make the recipe invalid (conflict, task, device), or None.

        Only asked when the current recipe is valid, so the reason is about ``name`` and not something else.
        """
        if name in self.enabled or self.problem(self.enabled) is not None:
            return None
        return self.problem(self.enabled + [name])

    def load_recipe(self, recipe: Recipe) -> None:
        """Take a saved recipe (opening a session)."""
        self.model_ref = recipe.model.ref
        self.task = recipe.model.task
        self.device = recipe.device
        self.bench = replace(recipe.bench)
        self.eval = replace(recipe.eval)
        self.enabled = [s.name for s in recipe.optimizations]
        self.params = {s.name: dict(s.params) for s in recipe.optimizations}


def setting_fields(obj) -> list[tuple[str, type, Any]]:
    """(name, type, value) of the offered bench or eval settings, typed from the core dataclass."""
    wanted = BENCH_FIELDS if isinstance(obj, BenchSettings) else EVAL_FIELDS
    types = {f.name: f.type for f in fields(obj)}
    out = []
    for name in wanted:
        t = types[name]
        kind = {"int": int, "float": float, "str": str}.get(str(t).split("|")[0].strip(), str)
        out.append((name, kind, getattr(obj, name)))
    return out


def coerce_setting(obj, name: str, raw: str) -> Any:
    """Check one bench/eval value against the core's limits; returns the value or raises InputError."""
    kind = dict((n, k) for n, k, _ in setting_fields(obj))[name]
    flag = name.replace("_", " ")
    raw = raw.strip()
    if raw == "" and name in OPTIONAL_FIELDS:
        return None
    try:
        value = kind(raw) if kind is not int else int(raw, 10)
    except ValueError:
        raise InputError(f"{flag} {raw!r}: expected {'an integer' if kind is int else 'a number'}") from None
    limits = getattr(obj, "LIMITS", {}).get(name)
    if limits and not limits[0] <= value <= limits[1]:
        raise InputError(f"{flag} {raw}: out of range; expected a number in [{limits[0]}, {limits[1]}]")
    return value
