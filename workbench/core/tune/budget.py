"""Tune's measures: durations, the accuracy budget and its limits, objectives, gain, the Pareto frontier and the
chosen trial. Pure functions, torch-free; docs/tune.md ("Objectives", "Accuracy budget") describes them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from workbench.core.errors import InputError
from workbench.core.evaluate import HIGHER_IS_BETTER

OBJECTIVES = ("latency", "throughput", "memory", "size")
ACCURACY_PARAM = "max_accuracy_drop"  # the parameter an accuracy budget's errors name

METRIC_ALIASES = {
    "ppl": "perplexity", "perplexity": "perplexity",
    "cos": "cosine_to_baseline", "cosine": "cosine_to_baseline", "cosine_to_baseline": "cosine_to_baseline",
    "cosine_min": "cosine_min",
    "recall": "recall_at_1", "recall@1": "recall_at_1", "r@1": "recall_at_1", "recall_at_1": "recall_at_1",
    "kl": "kl_divergence", "kl_divergence": "kl_divergence",
    "agree": "agreement", "agreement": "agreement",
    "next_token_agreement": "next_token_agreement", "next-token-agreement": "next_token_agreement",
    "accuracy": "accuracy", "acc": "accuracy",
}
ZERO_BASELINE = ("kl_divergence",)  # 0 for the baseline by definition: a relative limit is undefined
TASK_METRICS = {"causal-lm": ("perplexity", "next_token_agreement", "kl_divergence"),
                "encoder": ("cosine_to_baseline", "recall_at_1"),
                "seq-cls": ("accuracy", "agreement", "kl_divergence")}  # what evaluate.py can report per task


def param_name(name: str) -> str:
    """A parameter's name in the core's words: ``--trial-timeout`` (older callers pass a flag) -> ``trial_timeout``."""
    return str(name).lstrip("-").replace("-", "_")


def parse_duration(text: str, param: str = "budget") -> float:
    """``20m``, ``90s``, ``1h30m``, ``1.5h`` or plain seconds -> seconds. InputError naming the value, with
    ``param`` (``budget``, ``trial_timeout``) the parameter it was given for."""
    raw = str(text).strip().lower()
    units = {"h": 3600.0, "m": 60.0, "s": 1.0}
    total, num, seen = 0.0, "", False
    try:
        for ch in raw:
            if ch.isdigit() or ch == ".":
                num += ch
            elif ch in units and num:
                total += float(num) * units[ch]
                num, seen = "", True
            else:
                raise ValueError
        if num:
            total += float(num)
            seen = True
    except ValueError:
        seen = False
    if not seen or not math.isfinite(total) or total <= 0:
        raise InputError(f"{text}: not a duration; expected e.g. 20m, 90s, 1h30m or seconds > 0",
                         param=param_name(param))
    return total


@dataclass(frozen=True)
class Limit:
    kind: str  # "relative" (a fraction of the baseline) or "absolute" (in the metric's units)
    value: float
    text: str

    def describe(self) -> dict:
        return {"kind": self.kind, "value": self.value, "text": self.text}


@dataclass
class AccuracyBudget:
    text: str
    default: Limit | None = None  # applies to every metric not named
    per_metric: dict[str, Limit] = field(default_factory=dict)

    def limit_for(self, metric: str) -> tuple[Limit | None, str | None]:
        """(limit, note). A blanket relative limit leaves zero-baseline metrics unconstrained (note says so)."""
        if metric in self.per_metric:
            return self.per_metric[metric], None
        if self.default is None:
            return None, "not named in the accuracy budget"
        if self.default.kind == "relative" and metric in ZERO_BASELINE:
            return None, f"its baseline is 0, so a relative limit is undefined; name it with an absolute limit " \
                         f"(e.g. {metric}=0.02) to constrain it"
        return self.default, None

    def describe(self) -> dict:
        return {"text": self.text, "default": self.default.describe() if self.default else None,
                "per_metric": {k: v.describe() for k, v in self.per_metric.items()}}


def _parse_limit(value: str, where: str) -> Limit:
    v = value.strip()
    rel = v.endswith("%")
    try:
        x = float(v[:-1] if rel else v)
    except ValueError:
        x = float("nan")
    if not math.isfinite(x) or x < 0 or (rel and x > 1000):
        raise InputError(f"{where}: {value!r} is not a limit; expected a percentage such as 1% (relative) or a "
                         f"number >= 0 such as 0.01 (absolute)", param=ACCURACY_PARAM)
    return Limit("relative", x / 100, v) if rel else Limit("absolute", x, v)


def parse_accuracy_budget(text: str) -> AccuracyBudget:
    """``1%`` | ``0.01`` | ``perplexity=2%,cosine=0.01[,5%]``. InputError naming the input (``param`` is
    ``max_accuracy_drop``)."""
    raw = str(text or "").strip()
    if not raw:
        raise InputError("'': expected e.g. 1%, 0.01 or perplexity=2%,cosine=0.01", param=ACCURACY_PARAM)
    budget = AccuracyBudget(raw)
    for item in raw.split(","):
        item = item.strip()
        if not item:
            raise InputError(f"{raw}: empty item; expected NAME=LIMIT or LIMIT items separated by commas",
                             param=ACCURACY_PARAM)
        name, eq, value = item.partition("=")
        if not eq:
            if budget.default is not None:
                raise InputError(f"{raw}: two limits for every metric; expected at most one item without NAME=",
                                 param=ACCURACY_PARAM)
            budget.default = _parse_limit(item, raw)
            continue
        key = name.strip().lower()
        metric = METRIC_ALIASES.get(key)
        if metric is None:
            names = ", ".join(sorted(HIGHER_IS_BETTER))
            raise InputError(f"{name.strip()}: unknown metric; expected one of: {names} (or ppl, cosine, recall, "
                             f"kl, agree)", param=ACCURACY_PARAM)
        limit = _parse_limit(value, item)
        if limit.kind == "relative" and metric in ZERO_BASELINE:
            raise InputError(f"{item}: {metric} is 0 for the baseline, so a relative limit is undefined; expected "
                             f"an absolute limit such as {metric}=0.02", param=ACCURACY_PARAM)
        budget.per_metric[metric] = limit
    return budget



def objective_info(name: str, task: str, device: str) -> dict:
    if name not in OBJECTIVES:
        raise InputError(f"{name}: unknown objective; expected one of: {', '.join(OBJECTIVES)}", param="objective")
    causal = task == "causal-lm"
    gpu = str(device).startswith("cuda")
    if name == "latency":
        return {"name": name, "direction": "min", **(
            {"metric": "decode_ms_per_token.p50", "unit": "ms/token"} if causal else
            {"metric": "latency_ms.p50", "unit": "ms"})}
    if name == "throughput":
        return {"name": name, "direction": "max", "metric": "throughput.value",
                "unit": "decode tokens/s" if causal else "samples/s"}
    if name == "memory":
        return {"name": name, "direction": "min", "unit": "MB",
                "metric": "memory_mb.cuda_peak_reserved" if gpu else "memory_mb.rss_peak"}
    return {"name": name, "direction": "min", "metric": "model_size_mb", "unit": "MB"}


def memory_metric(device: str) -> str:
    return "memory_mb.cuda_peak_reserved" if str(device).startswith("cuda") else "memory_mb.rss_peak"


def dotted(doc: dict | None, path: str):
    cur: Any = doc
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur if isinstance(cur, (int, float)) and not isinstance(cur, bool) and math.isfinite(cur) else None


def gain(value: float | None, baseline: float | None, direction: str) -> float | None:
    """> 1 when ``value`` is better than ``baseline`` (speedup for latency, reduction factor for size/memory)."""
    if value is None or baseline is None or value <= 0 or baseline <= 0:
        return None
    return baseline / value if direction == "min" else value / baseline


def gain_threshold(best_gain: float, margin: float) -> float:
    """The gain below which a trial cannot compete with ``best_gain`` (worse by more than ``margin``)."""
    return best_gain / (1 + margin)


def check_accuracy(table: dict, budget: AccuracyBudget) -> dict:
    """Per-metric drops against the budget. ``table`` is a report's ``accuracy`` ({metric: {value, baseline, ...}}).

    Returns {rows: {metric: {...}}, ok, budget_used, unconstrained: {metric: note}}."""
    rows, used, ok, notes = {}, [], True, {}
    for metric in sorted(table):
        entry = table[metric]
        value, base = entry.get("value"), entry.get("baseline")
        if not isinstance(value, (int, float)) or not isinstance(base, (int, float)):
            continue
        hib = entry.get("higher_is_better", HIGHER_IS_BETTER.get(metric, True))
        drop = (base - value) if hib else (value - base)
        limit, note = budget.limit_for(metric)
        row = {"value": value, "baseline": base, "delta": value - base, "drop": drop,
               "drop_relative": drop / abs(base) if base else None, "higher_is_better": hib,
               "limit": limit.text if limit else None, "allowed": None, "ok": True}
        if limit is None:
            notes[metric] = note
        else:
            allowed = limit.value * abs(base) if limit.kind == "relative" else limit.value
            row["allowed"] = allowed
            row["ok"] = drop <= allowed + 1e-9 * max(1.0, abs(base))
            u = drop / allowed if allowed > 0 else (0.0 if drop <= 1e-12 else 1e6)
            used.append(max(-1e6, min(1e6, u)))
            ok = ok and row["ok"]
        rows[metric] = row
    return {"rows": rows, "ok": ok, "budget_used": max(used) if used else 0.0, "unconstrained": notes}


def pareto_frontier(points: list[dict], direction: str, objective_key: str = "objective",
                    accuracy_key: str = "budget_used") -> list[dict]:
    """The non-dominated points over (objective: ``direction``, accuracy: lower is better), best objective first.

    A point is dominated when another is at least as good on both and strictly better on one; of identical points
    the first (input order) is kept. Points missing either value are ignored. Pure function."""
    usable = [(i, p) for i, p in enumerate(points)
              if isinstance(p.get(objective_key), (int, float)) and isinstance(p.get(accuracy_key), (int, float))]
    sign = 1.0 if direction == "min" else -1.0
    usable.sort(key=lambda ip: (sign * ip[1][objective_key], ip[1][accuracy_key], ip[0]))
    out, best_acc = [], math.inf
    for _, p in usable:
        if p[accuracy_key] < best_acc:
            out.append(p)
            best_acc = p[accuracy_key]
    return out


# Gains within this fraction of the best are a tie: a recipe with a step more that is 0.01 % faster is not better
# (the 8B tune on an H200 chose a no-op bf16 cast + graph-decode over graph-decode alone by 0.009 %).
TIE = 0.01


def choose(trials: list[dict], min_gain: float) -> dict | None:
    """The feasible trial with the best gain over its baseline, provided that gain is at least ``1 + min_gain``.

    Gains, not raw objective values, are compared: each is against a baseline measured minutes before by the same
    worker, so drift of a shared machine cancels out. Gains within ``TIE`` of the best tie; among those: fewer
    steps, then lower budget_used, then the higher gain, then earlier."""
    feasible = [t for t in trials if t.get("feasible") and t.get("gain") is not None]
    if not feasible:
        return None
    top = max(t["gain"] for t in feasible)
    near = [t for t in feasible if t["gain"] >= top * (1 - TIE)]
    best = min(near, key=lambda t: (len(t["recipe"]), t.get("budget_used") or 0.0, -t["gain"], t["id"]))
    return best if best["gain"] >= 1 + min_gain else None


