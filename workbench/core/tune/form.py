"""A tune's settings as a front end has them (CLI flags, TUI form fields: plain strings or numbers) → a checked
``TuneConfig``. Every check lives here once; each raises ``InputError`` naming the value, with ``param`` the field
(``budget``, ``max_accuracy_drop``, ``opts``, ...), which the CLI renders as ``--budget`` and the TUI as the field's
label. Torch-free and cheap: the TUI runs ``parse_field`` on every keystroke. docs/tune.md describes the tune."""

from __future__ import annotations

import math

from workbench.core.errors import InputError
from workbench.core.recipe import Recipe, precheck
from workbench.core.tune.budget import OBJECTIVES, parse_accuracy_budget, parse_duration
from workbench.core.tune.orchestrator import TuneConfig

# The fields ``parse_field`` knows, in the order ``tune_config`` checks them (the first problem is the one raised).
FIELDS = ("objective", "max_accuracy_drop", "budget", "trial_timeout", "memory_mb", "max_trials", "min_gain",
          "max_contention", "max_space", "opts")
DEFAULTS = {"objective": "latency", "max_accuracy_drop": "1%", "budget": "20m", "trial_timeout": None,
            "memory_mb": None, "max_trials": None, "min_gain": 5.0, "max_contention": 25.0, "max_space": 400,
            "opts": None}


def _blank(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _number(value, param: str, expected: str, integer: bool = False) -> float | int:
    """A number from a number (the CLI's parsed flags) or a string (a form field)."""
    if isinstance(value, bool):
        raise InputError(f"{value}: {expected}", param=param)
    if isinstance(value, str):
        raw = value.strip()
        try:
            value = int(raw, 10) if integer else float(raw)
        except ValueError:
            raise InputError(f"{raw}: {expected}", param=param) from None
    if not isinstance(value, (int, float)) or not math.isfinite(value) or (integer and value != int(value)):
        raise InputError(f"{value}: {expected}", param=param)
    return int(value) if integer else value


def parse_opts(value) -> list[str] | None:
    """``"bf16, prune-l1"`` or ``["bf16", "prune-l1"]`` -> the names (empty items dropped); None when not given."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(o).strip() for o in items if str(o).strip()]


def parse_field(name: str, value):
    """One field's value, parsed: seconds for durations, an ``AccuracyBudget``, numbers (percentages as given),
    a list of optimization names; None for an optional field left blank. Raises InputError(param=name)."""
    if name == "objective":
        if value not in OBJECTIVES:
            raise InputError(f"{value}: unknown objective; expected one of: {', '.join(OBJECTIVES)}",
                             param="objective")
        return value
    if name == "max_accuracy_drop":
        return parse_accuracy_budget(value)
    if name == "budget":
        return parse_duration(value, param="budget")
    if name == "trial_timeout":
        return None if _blank(value) else parse_duration(value, param="trial_timeout")
    if name == "memory_mb":
        if _blank(value):
            return None
        v = _number(value, name, "expected a number of MB > 0")
        if not v > 0:
            raise InputError(f"{v}: expected a number of MB > 0", param=name)
        return v
    if name in ("max_trials", "max_space"):
        if _blank(value) and name == "max_trials":
            return None
        v = _number(value, name, "expected an integer >= 1", integer=True)
        if v < 1:
            raise InputError(f"{v}: expected an integer >= 1", param=name)
        return v
    if name in ("min_gain", "max_contention"):
        top = 1000 if name == "min_gain" else 100
        v = _number(value, name, f"expected a percentage in [0, {top}]")
        if not 0 <= v <= top:
            raise InputError(f"{v}: expected a percentage in [0, {top}]", param=name)
        return v
    if name == "opts":
        if value is None:  # not given: every optimization (a blank form field is not given; "" given is empty)
            return None
        opts = parse_opts(value)
        from workbench.core import optimizations

        known = {s.name for s in optimizations.all_specs()}
        for opt in opts:
            if opt not in known:
                raise InputError(f"{opt}: unknown optimization; expected one of: {', '.join(sorted(known))}",
                                 param="opts")
        if not opts:
            raise InputError(f"{value!r}: empty; expected NAME[,NAME...]", param="opts")
        return opts
    raise ValueError(f"unknown tune field {name!r}")


def tune_config(recipe: Recipe, *, objective: str = "latency", max_accuracy_drop: str = "1%",
                budget: str = "20m", trial_timeout: str | None = None, memory_mb: float | str | None = None,
                max_trials: int | str | None = None, min_gain: float | str = 5.0,
                max_contention: float | str = 25.0, max_space: int | str = 400, opts: str | list[str] | None = None,
                retry_failed: bool = False) -> TuneConfig:
    """A checked ``TuneConfig`` for a tune on ``recipe``'s model, device, bench and eval settings (``precheck``ed as
    given, then its optimizations are dropped: a tune searches its own). Durations are text (``20m``, ``90s``, ``1h30m``), ``min_gain`` and ``max_contention`` are
    percentages, ``opts`` is ``"a,b"`` or a list (None: every optimization). Raises InputError with ``param``."""
    given = {"objective": objective, "max_accuracy_drop": max_accuracy_drop, "budget": budget,
             "trial_timeout": trial_timeout, "memory_mb": memory_mb, "max_trials": max_trials, "min_gain": min_gain,
             "max_contention": max_contention, "max_space": max_space, "opts": opts}
    v = {name: parse_field(name, given[name]) for name in FIELDS}
    checked = precheck(recipe)
    if getattr(checked.model, "device_map", None):
        raise InputError(f"{checked.model.device_map}: tune rebuilds each trial's model on one device; expected a "
                         f"recipe without device_map", param="device_map")
    if getattr(checked.model, "tp", None) is not None:
        raise InputError(f"{checked.model.tp}: tune rebuilds each trial's model in one worker process; expected a "
                         f"recipe without tensor parallelism", param="tp")
    if checked.eval.source == "none":
        raise InputError("none: a tune needs accuracy to hold a budget; expected builtin, a file or hf:NAME",
                         param="eval")
    checked.optimizations = []
    return TuneConfig(recipe=checked, objective=v["objective"], accuracy=v["max_accuracy_drop"],
                      memory_mb=v["memory_mb"], budget_s=v["budget"], max_trials=v["max_trials"], opts=v["opts"],
                      max_space=v["max_space"], trial_timeout_s=v["trial_timeout"], retry_failed=retry_failed,
                      min_gain=v["min_gain"] / 100, contention_limit=v["max_contention"] / 100)
