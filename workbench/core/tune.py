"""Tune: search the optimization registry for the best recipe within an accuracy budget. Torch-free at import.

``Tuner(config, emit).run()`` builds a search space from the registry, runs trials one by one in a job process,
streams events and returns the tune report (also emitted as ``result`` with ``phase="tune"``).

Search space (``build_space``)
    Singles: every optimization that applies to the task and device, over the cartesian product of its parameters'
    ``search`` values (other parameters at their defaults). Pairs: two optimizations of different stages, each over
    the values of its first parameter with more than one search value. Triples: three optimizations of three
    different stages at their default (searched) values. Filtered by ``OptSpec.tasks``/``devices``/``requires`` (a
    module that is not importable skips the optimization) and by ``Recipe.validate()``; every skip is recorded with
    its reason. Ordered by a cost class (precision < quantize < runtime < prune < compile < calibrated quantization <
    training), then singles before pairs before triples, then registry order: deterministic. ``max_space`` keeps the
    first N (``space.capped`` counts the rest).

Running order and early stopping
    At each step the cheapest pending candidate runs; within one cost class, combinations are ranked by their
    predicted gain (the product of their parts' measured gains). A combination is not run (status ``pruned``,
    ``ran`` false, with the reason) when a part (or a measured sub-combination) failed, exceeded the accuracy budget
    on its own, or did not improve the objective by ``min_gain`` on its own, or when its predicted gain is more than
    ``predict_margin`` short of the best feasible trial's (a heuristic: gains rarely compose better than they
    multiply, and a budgeted search spends its time where it can win). Inside a trial the benchmark runs before
    the accuracy evaluation; when its gain is smaller than the best feasible trial's (x1, the baseline, before any)
    by more than ``prune_margin``, or the memory cap is exceeded, the evaluation is skipped and the trial is
    ``pruned`` with the reason (for ``size`` the check happens right after applying, before benchmarking).

Where trials run: a long-lived worker job
    ``job="tune-worker"`` in ``workbench/core/jobs/child.py`` (``worker`` below). It reports the model's content hash
    and the environment first (so a fully cached tune never loads the model), then loads the model once, measures
    the baseline once (accuracy from the baseline cache), snapshots every parameter and buffer into a safetensors
    file and keeps the module tree on the ``meta`` device. Each trial rebuilds a fresh model from that snapshot
    (a deepcopy of the meta tree + the tensors: 10 ms for demo:minilm; the snapshot is not resident, so process
    RSS is the trial model's, as in a ``run``), applies, benches, evaluates and sends one ``result`` event with
    ``phase="trial"``. A Python exception or out-of-memory error fails that trial only; a dead worker (killed,
    segfault, the OOM killer) fails the trial it was running with the error kind, and the next trial starts a new
    worker. Trials are sent through files in a folder the orchestrator owns (the job protocol's stdin carries one
    spec); the worker exits when its parent dies. Latency drifts on a shared machine, so the worker re-benches the
    baseline (not its accuracy) when its last measurement is ``rebaseline_s`` old, and every trial's ``gain`` is
    against the baseline its own worker measured last. Each benchmark records ``others_cpu``, the share of the CPU
    other processes used meanwhile; above ``contention_limit`` it is measured once more (the less contended result
    is kept, and the trial says ``contended`` when it still was).
    Measured on this 2-core CPU with demo:minilm: one trial through ``optbench run`` took 24 s of which 12 s were
    overhead (process start, torch import, load, baseline bench); through the worker a trial's overhead is the
    10 ms rebuild (0.2 s median per trial including event and file round trips, in an 8-minute tune), so the
    worker is used.

Trial cache: ``cache_dir()/"trials"/<key>.json``
    Keyed on the model's content hash, the task and device, the device name, CPU count and torch threads, torch /
    transformers / torchao / optbench / Python versions, the resolved recipe, every bench and eval setting and the
    sha256 of the evaluated data (``EvalData.digest``: the same source name can hold different text). Finished, pruned and failed trials are cached (not cancelled or
    timed-out ones; ``retry_failed`` re-runs failures). A cached pruned trial is reused only when the current rules
    would prune it again from its stored measurements. A second identical tune performs zero trials; a tune killed
    half-way resumes without recomputing finished trials. The baseline of the last worker is cached beside them.

Objectives (``objective_info``): ``latency`` = p50 decode ms/token for causal LMs (``decode_ms_per_token.p50``),
p50 latency of a forward for encoders/classifiers (``latency_ms.p50``), minimized; ``throughput`` =
``throughput.value`` (decode tokens/s or samples/s), maximized; ``memory`` = ``memory_mb.rss_peak`` on CPU,
``memory_mb.cuda_peak_reserved`` on a GPU, minimized; ``size`` = ``model_size_mb``, minimized.

Accuracy budget (``parse_accuracy_budget``): ``1%`` (relative, every metric of the accuracy table), ``0.01``
(absolute, every metric), or ``perplexity=2%,cosine=0.01`` (per metric; aliases ppl, cosine, recall, kl, agree).
A drop is ``baseline - value`` for higher-is-better metrics and ``value - baseline`` otherwise. A relative limit
on a metric whose baseline is 0 (KL) is undefined: such a metric is left unconstrained by a blanket ``N%`` and
named in the constraint report; name it with an absolute limit (``kl=0.02``) to constrain it. ``budget_used`` =
the largest drop / allowed drop over the constrained metrics (<= 1 meets the budget; negative: better than the
baseline). Trials are compared by ``gain`` (baseline objective / trial objective, inverted for throughput), each
against the baseline its worker measured at most ``rebaseline_s`` before, so a machine's drift cancels out; the
objective values are reported as measured. Frontier (``pareto_frontier``): the non-dominated points over (gain,
budget_used), the baseline (x1, 0) included. Chosen: the feasible trial (finished, accuracy and memory within
budget) with the best gain, provided it is at least ``1 + min_gain``; otherwise none (the CLI exits 3).

Events (``emit(type, **payload)``; every payload is JSON-serialisable, see ``encode_event``)
    ``tune-start``  {model, task, device, objective: {name, metric, unit, direction}, constraints, budget_s,
                    max_trials, space: {size, singles, pairs, triples, capped}, candidates: [label], skipped:
                    [{label, recipe, reason}]}
    ``trial-start`` {id, label, recipe, cost, phase, worker_pid}
    ``trial``       one trial summary: {id, label, recipe: [{name, params}], phase: single|pair|triple, cost,
                    status: finished|pruned|failed|cancelled, cached, ran, reason, error: {kind, message, hint} |
                    null, objective, baseline_objective, gain (>1 is better), accuracy: {metric: {value, baseline,
                    delta, drop, drop_relative, limit, allowed, ok}}, accuracy_ok, budget_used, memory_mb,
                    model_size_mb, latency_p50_ms, ttft_p50_ms, decode_ms_per_token_p50, throughput, feasible,
                    seconds (wall, as measured when it ran), apply_seconds, bench_seconds, eval_seconds,
                    others_cpu (other processes' share of the CPU during its benchmark), contended, key}
    ``frontier``    {frontier: [trial summary + {baseline: bool}], best: trial summary | null, baseline_objective,
                    objective}
    ``progress``    {stage, fraction (of the tune), stage_fraction (of the worker's current step) | null,
                    trials_run, trials_decided, elapsed_s, budget_s}
    ``log``         {level, text}
    ``sample``      monitor readings of the worker, passed through
    ``result``      {phase: "tune", report: the tune report (README, "JSON report (optbench tune --json)")}
"""

from __future__ import annotations

import gc
import importlib.util
import itertools
import json
import math
import os
import queue
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from workbench.core import atomic, cache, optimizations
from workbench.core.errors import InputError, JobFailed, OptbenchError
from workbench.core.evaluate import HIGHER_IS_BETTER
from workbench.core.jobs import protocol
from workbench.core.optimizations.base import STAGES
from workbench.core.recipe import ModelSpec, OptStep, Recipe

SCHEMA = 1
TRIAL_SCHEMA = 1
Emit = Callable[..., None]

OBJECTIVES = ("latency", "throughput", "memory", "size")
STATUSES = ("finished", "pruned", "failed", "cancelled")
EVENT_TYPES = ("tune-start", "trial-start", "trial", "frontier", "progress", "log", "sample", "result")

# Cost classes: cheap and usually promising first; training last.
STAGE_COST = {"precision": 0.0, "quantize": 0.1, "runtime": 0.2, "prune": 1.0, "compile": 2.0, "train": 3.5}
EMULATED_COST = 4.0  # added to a step this CPU can only emulate: ordered after training-class trials
NAME_COST = {"early-exit": 1.0, "graph-decode": 1.0, "int8-selective": 2.0, "qat": 3.0, "distill": 3.5,
             "onnx": 0.3, "onnx-int8": 0.3, "openvino": 0.3, "openvino-int8": 1.5}  # export (+ calibration) first
_PHASES = ("single", "single", "pair", "triple")

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


# ------------------------------------------------------------------ parsing

def parse_duration(text: str, flag: str = "--budget") -> float:
    """``20m``, ``90s``, ``1h30m``, ``1.5h`` or plain seconds -> seconds. InputError naming the input."""
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
        raise InputError(f"{flag} {text}: not a duration; expected e.g. 20m, 90s, 1h30m or seconds > 0")
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
            return None, "not named in --max-accuracy-drop"
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
        raise InputError(f"--max-accuracy-drop {where}: {value!r} is not a limit; expected a percentage such as 1% "
                         f"(relative) or a number >= 0 such as 0.01 (absolute)")
    return Limit("relative", x / 100, v) if rel else Limit("absolute", x, v)


def parse_accuracy_budget(text: str) -> AccuracyBudget:
    """``1%`` | ``0.01`` | ``perplexity=2%,cosine=0.01[,5%]``. InputError naming the input."""
    raw = str(text or "").strip()
    if not raw:
        raise InputError("--max-accuracy-drop '': expected e.g. 1%, 0.01 or perplexity=2%,cosine=0.01")
    budget = AccuracyBudget(raw)
    for item in raw.split(","):
        item = item.strip()
        if not item:
            raise InputError(f"--max-accuracy-drop {raw}: empty item; expected NAME=LIMIT or LIMIT items "
                             f"separated by commas")
        name, eq, value = item.partition("=")
        if not eq:
            if budget.default is not None:
                raise InputError(f"--max-accuracy-drop {raw}: two limits for every metric; expected at most one "
                                 f"item without NAME=")
            budget.default = _parse_limit(item, raw)
            continue
        key = name.strip().lower()
        metric = METRIC_ALIASES.get(key)
        if metric is None:
            names = ", ".join(sorted(HIGHER_IS_BETTER))
            raise InputError(f"--max-accuracy-drop {name.strip()}: unknown metric; expected one of: {names} "
                             f"(or ppl, cosine, recall, kl, agree)")
        limit = _parse_limit(value, item)
        if limit.kind == "relative" and metric in ZERO_BASELINE:
            raise InputError(f"--max-accuracy-drop {item}: {metric} is 0 for the baseline, so a relative limit is "
                             f"undefined; expected an absolute limit such as {metric}=0.02")
        budget.per_metric[metric] = limit
    return budget


# ------------------------------------------------------------------ objectives and accuracy

def objective_info(name: str, task: str, device: str) -> dict:
    if name not in OBJECTIVES:
        raise InputError(f"--objective {name}: unknown objective; expected one of: {', '.join(OBJECTIVES)}")
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


def choose(trials: list[dict], min_gain: float) -> dict | None:
    """The feasible trial with the best gain over its baseline, provided that gain is at least ``1 + min_gain``.

    Gains, not raw objective values, are compared: each is against a baseline measured minutes before by the same
    worker, so drift of a shared machine cancels out. Ties: lower budget_used, fewer steps, earlier."""
    feasible = [t for t in trials if t.get("feasible") and t.get("gain") is not None]
    if not feasible:
        return None
    best = min(feasible, key=lambda t: (-t["gain"], t.get("budget_used") or 0.0, len(t["recipe"]), t["id"]))
    return best if best["gain"] >= 1 + min_gain else None


# ------------------------------------------------------------------ search space

@dataclass
class Candidate:
    steps: list[dict]  # resolved: [{"name", "params"}]
    label: str
    phase: int  # 0 single at default values, 1 single variant, 2 pair, 3 triple
    cost: float
    index: int = 0

    @property
    def ident(self) -> str:
        return canon(self.steps)

    def describe(self) -> dict:
        return {"label": self.label, "recipe": self.steps, "phase": _PHASES[self.phase], "cost": self.cost}


@dataclass
class Space:
    candidates: list[Candidate]
    skipped: list[dict]
    counts: dict
    task: str
    device: str


def canon(steps: list[dict]) -> str:
    return json.dumps([[s["name"], s["params"]] for s in steps], sort_keys=True, default=str)


def _label(name: str, params: dict, searched: tuple[str, ...]) -> str:
    shown = ",".join(f"{k}={params[k]}" for k in searched if k in params)
    return f"{name}:{shown}" if shown else name


def _step_cost(spec, params: dict) -> float:
    cost = NAME_COST.get(spec.name, STAGE_COST[spec.stage])
    if params.get("importance") == "gradient" or (spec.name == "drop-layers" and params.get("which") == "importance"):
        cost += 0.5
    if spec.name == "int8-selective" and params.get("keep") == -1:
        cost += 0.5
    steps_param = spec.param("steps")
    if steps_param is not None and isinstance(params.get("steps"), int) and params["steps"] > steps_param.default:
        cost += 0.5
    if spec.name == "compile" and params.get("mode") != "default":
        cost += 0.2
    return round(cost, 3)


def _grid(spec) -> list[dict]:
    """Every combination of the searchable values; the one equal to the defaults first."""
    searched = [p for p in spec.params if p.search]
    if not searched:
        return [{}]
    combos = [dict(zip([p.name for p in searched], values))
              for values in itertools.product(*[p.search for p in searched])]
    default = {p.name: p.default for p in searched}
    combos.sort(key=lambda c: c != default)  # stable: the default first, then product order
    return combos


def _combo_values(spec) -> list[dict]:
    """Values used in combinations: the first parameter with several search values varies, the rest at default."""
    searched = [p for p in spec.params if p.search]
    base = {p.name: (p.default if p.default in p.search else p.search[0]) for p in searched}
    vary = next((p for p in searched if len(p.search) > 1), None)
    if vary is None:
        return [base]
    values = sorted(vary.search, key=lambda v: v != base[vary.name])  # the default first
    return [{**base, vary.name: v} for v in values]


def _requires_missing(spec) -> list[str]:
    missing = []
    for mod in spec.requires:
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(mod)
    return missing


def build_space(task: str, device: str, opts: list[str] | None = None, max_space: int = 400,
                pairs: bool = True, triples: bool = True) -> Space:
    """Candidate recipes for ``task`` on ``device`` (see the module docstring). Torch-free."""
    dev_kind = "cuda" if str(device).startswith("cuda") else "cpu"
    specs = optimizations.all_specs()
    if opts:
        known = {s.name for s in specs}
        for name in opts:
            if name not in known:
                raise InputError(f"--opts {name}: unknown optimization; expected one of: "
                                 f"{', '.join(s.name for s in specs)}")
        specs = [s for s in specs if s.name in set(opts)]
    skipped: list[dict] = []
    avail = []
    for spec in specs:
        reason = None
        if task not in spec.tasks:
            reason = f"does not apply to {task} models (only {', '.join(spec.tasks)})"
        elif dev_kind not in spec.devices:
            reason = f"does not run on {dev_kind} (only {', '.join(spec.devices)})"
        else:
            missing = _requires_missing(spec)
            if missing:
                reason = f"needs the Python module {', '.join(missing)}, which is not importable here"
        if reason:
            skipped.append({"label": spec.name, "recipe": [{"name": spec.name, "params": {}}], "reason": reason})
        else:
            avail.append(spec)

    def searched_names(spec) -> tuple[str, ...]:  # the parameters a label shows: those the search varies
        return tuple(p.name for p in spec.params if p.search and len(p.search) > 1)

    # A bf16 cast on a CPU without native bf16 matmuls is emulated (2.9x slower decode on an AVX2-only EPYC): its
    # trials go last, after everything that can win there, instead of first among the cheap precision casts.
    emulated: set[str] = set()
    if dev_kind == "cpu":
        from workbench.core.measure.cpu import describe

        if not describe()["bf16_native"]:
            emulated.add("bf16")

    def step_cost(spec, params: dict) -> float:
        slow = spec.name in emulated and params.get("mode", "cast") == "cast"
        return _step_cost(spec, params) + (EMULATED_COST if slow else 0.0)

    def make(parts: list[tuple[Any, dict]], phase: int) -> Candidate | dict:
        label = " + ".join(_label(spec.name, params, searched_names(spec)) for spec, params in parts)
        raw = [OptStep(spec.name, dict(params)) for spec, params in parts]
        try:
            resolved = Recipe(ModelSpec("tune"), raw).validate(task=task, device=device)
        except InputError as exc:
            return {"label": label, "recipe": [{"name": s.name, "params": s.params} for s in raw],
                    "reason": exc.message}
        steps = [{"name": s.name, "params": s.params} for s in resolved.optimizations]
        cost = max(step_cost(spec, s["params"]) for (spec, _), s in zip(parts, steps))
        return Candidate(steps, label, phase, round(cost + 0.05 * (len(parts) - 1), 3))

    made: list[Candidate] = []
    seen: set[str] = set()

    def add(item) -> None:
        if isinstance(item, dict):
            skipped.append(item)
        elif item.ident not in seen:
            seen.add(item.ident)
            made.append(item)

    counts = {"singles": 0, "pairs": 0, "triples": 0}
    for spec in avail:
        for i, params in enumerate(_grid(spec)):
            c = make([(spec, params)], 0 if i == 0 else 1)
            add(c)
            counts["singles"] += isinstance(c, Candidate)
    if pairs:
        for a, b in itertools.combinations(avail, 2):
            if STAGES[a.stage] == STAGES[b.stage]:
                continue
            a, b = sorted((a, b), key=lambda s: STAGES[s.stage])
            for pa, pb in itertools.product(_combo_values(a), _combo_values(b)):
                c = make([(a, pa), (b, pb)], 2)
                add(c)
                counts["pairs"] += isinstance(c, Candidate)
    if triples:
        for trio in itertools.combinations(avail, 3):
            if len({STAGES[s.stage] for s in trio}) < 3:
                continue
            trio = sorted(trio, key=lambda s: STAGES[s.stage])
            c = make([(s, _combo_values(s)[0]) for s in trio], 3)
            add(c)
            counts["triples"] += isinstance(c, Candidate)
    for i, c in enumerate(made):
        c.index = i
    # The cap keeps singles first (cheapest first), then pairs, then triples; the run order is by cost.
    made.sort(key=lambda c: (c.phase >= 2, c.phase, c.cost, c.index))
    capped = made[max_space:] if max_space and len(made) > max_space else []
    made = made[:max_space] if max_space else made
    made.sort(key=lambda c: (c.cost, c.phase, c.index))
    for i, c in enumerate(made):
        c.index = i
    counts.update({"size": len(made), "capped": len(capped), "capped_labels": [c.label for c in capped[:20]],
                   "skipped": len(skipped)})
    if emulated:
        counts["ordered_last"] = {"names": sorted(emulated), "reason": "no native bfloat16 matmuls on this CPU "
                                  "(AVX512-BF16/AMX absent or capped): the cast runs emulated"}
    return Space(made, skipped, counts, task, str(device))


# ------------------------------------------------------------------ cache

def trials_dir() -> Path:
    return cache.cache_dir() / "trials"


def context_key_parts(ctx: dict, recipe: Recipe) -> dict:
    """Everything besides the recipe that changes a trial's numbers."""
    env = ctx.get("environment") or {}
    ev = asdict(recipe.eval)
    return {
        "model": ctx.get("fingerprint"), "task": ctx.get("task"), "device": ctx.get("device"),
        "device_name": env.get("device_name"), "cpu": env.get("cpu"), "cpu_count": env.get("cpu_count"),
        "torch_threads": env.get("torch_threads"), "cuda": env.get("cuda"), "torch": env.get("torch"),
        "transformers": env.get("transformers"), "torchao": env.get("torchao"), "optbench": env.get("optbench"),
        "python": env.get("python"), "trust_remote_code": recipe.model.trust_remote_code,
        "revision": recipe.model.revision, "bench": asdict(recipe.bench), "eval": ev,
        "eval_data": ctx.get("eval_digest"),  # sha256 of the evaluated text: a source name can change content
    }


def trial_key(ctx: dict, recipe: Recipe, steps: list[dict], selftest: str | None = None) -> str:
    return cache.key({"schema": TRIAL_SCHEMA, "kind": "trial", **context_key_parts(ctx, recipe),
                      "recipe": [[s["name"], s["params"]] for s in steps], "selftest": selftest})


def baseline_key(ctx: dict, recipe: Recipe) -> str:
    return cache.key({"schema": TRIAL_SCHEMA, "kind": "tune-baseline", **context_key_parts(ctx, recipe)})


def cache_load(key: str) -> dict | None:
    path = trials_dir() / f"{key}.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # missing or damaged: a miss, never an error
    return doc if isinstance(doc, dict) and doc.get("schema") == TRIAL_SCHEMA else None


def cache_save(key: str, doc: dict) -> None:
    atomic.write_json(trials_dir() / f"{key}.json", jsonable({"schema": TRIAL_SCHEMA, **doc}))


def jsonable(obj):
    return json.loads(json.dumps(protocol._clean(obj), allow_nan=False, default=str))


def encode_event(type_: str, **payload) -> str:
    """One JSON line with the job protocol's envelope ({type, t, ...}) for a tune event."""
    if type_ not in EVENT_TYPES:
        raise ValueError(f"unknown tune event type {type_!r}")
    return json.dumps(protocol._clean({"type": type_, "t": time.time(), **payload}), allow_nan=False, default=str)


# ------------------------------------------------------------------ the worker (runs inside the job process)

def _strip(phase: dict | None) -> dict | None:
    if phase is None:
        return None
    out = dict(phase)
    for k in ("latency_ms", "ttft_ms", "decode_ms_per_token"):
        if out.get(k):
            out[k] = {kk: vv for kk, vv in out[k].items() if kk != "samples"}
    return out


class _Pristine:
    """The loaded model's weights in a safetensors file + its module tree on the meta device; ``fresh()`` rebuilds
    an independent copy on the device. Falls back to an in-memory deepcopy when the snapshot cannot be made."""

    def __init__(self, model, device: str, folder: Path) -> None:
        import copy

        import torch
        from safetensors.torch import save_file

        self.device = device
        self.path = folder / "pristine.safetensors"
        self.mode = "file"
        try:
            tensors, self.palias, self.balias, self.grad = {}, {}, {}, {}
            first: dict[int, str] = {}
            for name, p in model.named_parameters(remove_duplicate=False):
                if id(p) not in first:
                    first[id(p)] = name
                    tensors[f"p.{name}"] = p.detach().to("cpu").clone().contiguous()
                    self.grad[name] = p.requires_grad
                self.palias[name] = first[id(p)]
            firstb: dict[int, str] = {}
            for name, b in model.named_buffers(remove_duplicate=False):
                if id(b) not in firstb:
                    firstb[id(b)] = name
                    tensors[f"b.{name}"] = b.detach().to("cpu").clone().contiguous()
                self.balias[name] = firstb[id(b)]
            folder.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(self.path))
            del tensors
            self.skeleton = model.to("meta")
        except Exception:  # noqa: BLE001 - any model the snapshot cannot handle still tunes, from memory
            self.mode = "memory"
            self.skeleton = None
            self.copy = copy.deepcopy(model).to("cpu")
        self.torch = torch

    def fresh(self):
        import copy

        if self.mode == "memory":
            return copy.deepcopy(self.copy).to(self.device)
        from safetensors.torch import load_file

        torch = self.torch
        m = copy.deepcopy(self.skeleton)
        state = load_file(str(self.path), device=str(self.device))
        made: dict[str, Any] = {}
        for name, _ in list(m.named_parameters(remove_duplicate=False)):
            canon_name = self.palias[name]
            if canon_name not in made:
                made[canon_name] = torch.nn.Parameter(state[f"p.{canon_name}"],
                                                      requires_grad=self.grad.get(canon_name, True))
            mod, _, attr = name.rpartition(".")
            (m.get_submodule(mod) if mod else m)._parameters[attr] = made[canon_name]
        for name, _ in list(m.named_buffers(remove_duplicate=False)):
            mod, _, attr = name.rpartition(".")
            (m.get_submodule(mod) if mod else m)._buffers[attr] = state[f"b.{self.balias[name]}"]
        return m.eval()


def _release(device: str) -> None:
    gc.collect()
    if "torch._dynamo" in sys.modules:
        try:
            sys.modules["torch._dynamo"].reset()
        except Exception:  # noqa: BLE001
            pass
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back, so the next trial's RSS is its own
        except Exception:  # noqa: BLE001
            pass


class _CpuShare:
    """The share of the machine's CPU time that other processes used between ``__init__`` and ``stop()``."""

    def __init__(self) -> None:
        import psutil

        self.psutil = psutil
        self.proc = psutil.Process()
        self.t0 = time.monotonic()
        self.sys0 = psutil.cpu_times()
        self.own0 = self.proc.cpu_times()

    def stop(self) -> float | None:
        wall = time.monotonic() - self.t0
        sys1, own1 = self.psutil.cpu_times(), self.proc.cpu_times()
        if wall <= 0:
            return None

        def busy(t) -> float:
            return sum(t) - t.idle - getattr(t, "iowait", 0.0)

        own = (own1.user + own1.system) - (self.own0.user + self.own0.system)
        others = busy(sys1) - busy(self.sys0) - own
        return max(0.0, min(1.0, others / (wall * (self.psutil.cpu_count() or 1))))


def _bench(loaded, recipe: Recipe, data, monitor, emit: Emit, stage: str, limit: float) -> dict:
    """Bench (no eval) with the other processes' CPU share measured; re-benched once when it was over ``limit``
    (the less contended measurement is kept; ``others_cpu`` tells what it was)."""
    from workbench.core import pipeline

    best = None
    for attempt in range(2):
        share = _CpuShare()
        measured, _ = pipeline._measure(loaded, recipe, data, monitor, emit, stage, None, do_eval=False)
        measured["others_cpu"] = share.stop()
        measured["bench_attempts"] = attempt + 1
        if best is None or (measured["others_cpu"] or 0) < (best["others_cpu"] or 0):
            best = measured
        if (best["others_cpu"] or 0) <= limit:
            break
        emit("log", level="warning", text=f"{stage}: other processes used {100 * measured['others_cpu']:.0f} % of "
                                          f"the CPU during the benchmark; measuring again")
        time.sleep(2.0)
    return best


def _context(recipe: Recipe) -> dict:
    """Model content hash, task, device and environment, without loading the weights."""
    import torch  # noqa: F401  (device details in the environment)

    from workbench.core.measure.env import environment
    from workbench.core.modelref import resolve
    from workbench.core.models import detect_task, fingerprint, pick_device

    ref = resolve(recipe.model.ref)
    config = None
    task = recipe.model.task or ref.task_hint
    if task is None or ref.path is None:
        import transformers

        common = {"trust_remote_code": recipe.model.trust_remote_code}
        if recipe.model.revision:
            common["revision"] = recipe.model.revision
        if ref.gguf_file:
            common["gguf_file"] = ref.gguf_file
        try:
            config = transformers.AutoConfig.from_pretrained(ref.path or ref.hub_id, **common)
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"--model {recipe.model.ref}: could not read its config ({str(exc)[:200]}); "
                             f"expected a transformers model") from None
        task = task or detect_task(config)
    device = pick_device(recipe.device)
    from workbench.core.data import load_eval

    return {"fingerprint": fingerprint(ref, config), "task": task, "device": device,
            "environment": environment(device), "eval_digest": load_eval(recipe.eval, task).digest}


def worker(spec: dict, emit: Emit) -> dict:
    """``job="tune-worker"``: context, load, baseline, then trials read from ``spec["inbox"]`` until ``stop``."""
    from workbench.core import pipeline
    from workbench.core.data import load_eval
    from workbench.core.measure.monitor import Monitor
    from workbench.core.models import load

    recipe = Recipe.from_dict(spec["recipe"])
    inbox = Path(spec["inbox"])
    parent = os.getppid()
    ctx = _context(recipe)
    emit("result", phase="tune-context", report=ctx)
    monitor = Monitor(hz=recipe.bench.monitor_hz, on_sample=lambda s: emit("sample", **s))
    monitor.start()
    try:
        emit("progress", stage="worker: loading", fraction=0.0)
        t0 = time.perf_counter()
        loaded = load(recipe.model.ref, recipe.model.task or ctx["task"], recipe.device,
                      recipe.model.trust_remote_code, recipe.model.revision)
        load_s = time.perf_counter() - t0
        info = loaded.info()
        emit("model", **info)
        recipe = recipe.validate(task=loaded.task, device=loaded.device)
        env = ctx["environment"]
        data = load_eval(recipe.eval, loaded.task)
        t0 = time.perf_counter()
        key = pipeline._baseline_key(loaded, recipe, data, env)
        hit = cache.load_baseline(key)
        contention = float(spec.get("contention_limit", 0.25))
        if hit is not None:
            cached_doc, reference = hit
            base = _bench(loaded, recipe, data, monitor, emit, "baseline", contention)
            base["metrics"] = cached_doc["metrics"]
        else:
            share = _CpuShare()
            base, reference = pipeline._measure(loaded, recipe, data, monitor, emit, "baseline", None)
            base["others_cpu"] = share.stop()  # bench + eval: a rough figure
            cache.save_baseline(key, {"metrics": base["metrics"], "model": loaded.fingerprint}, reference)
            if (base["others_cpu"] or 0) > contention:  # the latency must be clean: bench again
                base = {**_bench(loaded, recipe, data, monitor, emit, "baseline", contention),
                        "metrics": base["metrics"]}
        base["accuracy_cached"] = hit is not None
        base["measured_at"] = time.time()
        baseline_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pristine = _Pristine(loaded.model, loaded.device, Path(spec["scratch"]))
        loaded.model = None
        _release(loaded.device)
        emit("result", phase="tune-baseline",
             report={"baseline": _strip(base), "model": info, "load_seconds": load_s, "baseline_seconds": baseline_s,
                     "snapshot_seconds": time.perf_counter() - t0, "pristine": pristine.mode, "pid": os.getpid(),
                     "eval_source": data.source})
        seq = 0
        base_at = time.monotonic()
        while True:
            seq += 1
            msg = _wait_message(inbox, seq, parent)
            if msg is None or msg.get("type") == "stop":
                return {"trials": seq - 1}
            rebaseline = spec.get("rebaseline_s")
            if rebaseline and time.monotonic() - base_at > rebaseline:
                # latency drifts on a shared machine: gains are against a baseline measured minutes ago at most
                loaded.model = pristine.fresh()
                try:
                    fresh = _bench(loaded, recipe, data, monitor, emit, "baseline", contention)
                    base = {**fresh, "metrics": base["metrics"], "accuracy_cached": base.get("accuracy_cached"),
                            "measured_at": time.time()}
                finally:
                    loaded.model = None
                    _release(loaded.device)
                base_at = time.monotonic()
            t0 = time.perf_counter()
            try:
                rep = _run_trial(msg, loaded, pristine, recipe, data, reference, base, monitor, emit, contention)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - one trial's failure is that trial's result
                import traceback

                from workbench.core.jobs.child import classify

                kind, message, hint = classify(exc)
                if kind == "exception":
                    emit("log", level="error", text="".join(traceback.format_exception(exc))[-3000:])
                rep = {"status": "failed", "error": {"kind": kind, "message": message, "hint": hint},
                       "reason": message}
            finally:
                loaded.model = None
                loaded.generate_kwargs = {}
                _release(loaded.device)
            rep.update({"id": msg.get("id"), "seconds": time.perf_counter() - t0})
            emit("result", phase="trial", report=rep)
    finally:
        monitor.stop()


def _wait_message(inbox: Path, seq: int, parent: int) -> dict | None:
    path = inbox / f"msg-{seq:06d}.json"
    while True:
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                pass  # written atomically, so this is not expected; read again
        if os.getppid() != parent:  # the tune process is gone: nobody will read our results
            return None
        time.sleep(0.02)


def _run_trial(msg: dict, loaded, pristine: _Pristine, recipe: Recipe, data, reference, base: dict, monitor,
               emit: Emit, contention: float = 0.25) -> dict:
    from workbench.core import pipeline
    from workbench.core.evaluate import evaluate
    from workbench.core.measure import memory
    from workbench.core.optimizations.context import ApplyContext

    tid = msg.get("id")
    selftest = msg.get("selftest")
    if selftest and os.environ.get("OPTBENCH_SELFTEST") == "1":  # tests only: a trial that kills its worker
        if selftest == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if selftest == "raise":
            raise RuntimeError("selftest: this trial raises")
    steps = [OptStep(s["name"], dict(s["params"])) for s in msg["recipe"]]
    trial_recipe = Recipe(recipe.model, steps, recipe.bench, recipe.eval, recipe.device).validate(
        task=loaded.task, device=loaded.device)
    stage = f"trial {tid}"
    emit("progress", stage=f"{stage}: preparing", fraction=0.0)
    loaded.model = pristine.fresh()
    loaded.generate_kwargs = {}
    reports = []
    t_apply = time.perf_counter()
    for i, step in enumerate(trial_recipe.optimizations):
        spec = optimizations.get(step.name)
        emit("progress", stage=f"{stage}: applying {spec.name}", fraction=i / max(1, len(steps)))
        ctx = ApplyContext(device=loaded.device, task=loaded.task, tokenizer=loaded.tokenizer,
                           log=lambda text: emit("log", level="info", text=text),
                           warn=lambda text: emit("log", level="warning", text=text),
                           progress=lambda f, n=spec.name, **kw: emit("progress", stage=f"{stage}: applying {n}",
                                                                      fraction=round(f, 4), **kw),
                           eval_settings=trial_recipe.eval)
        ctx.extra["generate_kwargs"] = loaded.generate_kwargs
        t0 = time.perf_counter()
        rep = spec.apply(loaded.model, step.params, ctx) or {}
        new_model = rep.pop("_model", None)
        if new_model is not None:
            loaded.model = new_model
        reports.append({"name": spec.name, "params": step.params, "seconds": time.perf_counter() - t0,
                        "exportable": spec.exportable, **rep})
    apply_s = time.perf_counter() - t_apply
    stop = msg.get("stop") or {}
    metric, direction, limit = stop.get("metric"), stop.get("direction", "min"), stop.get("gain_threshold")
    size_mb = memory.model_size_bytes(loaded.model) / 1e6
    out = {"status": "finished", "reason": None, "error": None, "optimization_reports": reports,
           "apply_seconds": apply_s, "measured": {"model_size_mb": size_mb}, "baseline": _strip(base)}

    def short(value) -> str | None:
        """Why the trial cannot win, or None."""
        g = gain(value, dotted(base, metric), direction) if metric else None
        if g is None or limit is None or g >= limit:
            return None
        return f"{stop.get('name', metric)} {value:.4g} {stop.get('unit', '')} is x{g:.3f} vs the baseline, " \
               f"short of x{limit:.3f} (the best so far less the pruning margin)"

    if metric == "model_size_mb" and short(size_mb):
        out.update(status="pruned", reason=f"{short(size_mb)}: not benchmarked or evaluated")
        return out
    t0 = time.perf_counter()
    measured = _bench(loaded, trial_recipe, data, monitor, emit, stage, contention)
    out["bench_seconds"] = time.perf_counter() - t0
    measured = _strip(measured)
    measured.pop("metrics", None)
    out["measured"] = measured
    value = dotted(measured, metric) if metric else None
    if short(value):
        out.update(status="pruned", reason=f"{short(value)}: accuracy not evaluated")
        return out
    cap, mem_metric = stop.get("memory_cap"), stop.get("memory_metric")
    mem = dotted(measured, mem_metric) if mem_metric else None
    if cap is not None and mem is not None and mem > cap:
        out.update(status="pruned", reason=f"peak memory {mem:.0f} MB exceeds the cap of {cap:.0f} MB: accuracy "
                                            f"not evaluated")
        return out
    t0 = time.perf_counter()
    metrics, _ = evaluate(loaded.model, loaded.tokenizer, loaded.task, data, trial_recipe.eval, loaded.device,
                          reference, on_progress=lambda f: emit("progress", stage=f"{stage}: evaluating",
                                                                fraction=round(f, 4)))
    measured["eval_seconds"] = time.perf_counter() - t0
    measured["metrics"] = metrics
    out["accuracy"] = pipeline.accuracy_table(base["metrics"], metrics)
    return out


# ------------------------------------------------------------------ the orchestrator (the caller's process)

@dataclass
class TuneConfig:
    recipe: Recipe  # model, bench and eval settings, device; its optimizations are ignored
    objective: str = "latency"
    accuracy: AccuracyBudget = field(default_factory=lambda: parse_accuracy_budget("1%"))
    memory_mb: float | None = None
    budget_s: float = 1200.0
    max_trials: int | None = None  # trials run by a worker (cached and not-run ones do not count)
    opts: list[str] | None = None
    max_space: int = 400
    prune_margin: float = 0.05
    min_gain: float = 0.05  # below this a part is not combined, and a best recipe is not chosen (noise here: ~5 %)
    predict_margin: float = 0.25  # a combination predicted worse than the best by more than this is not run
    rebaseline_s: float = 120.0  # the worker re-benches the baseline when its last measurement is this old
    contention_limit: float = 0.25  # other processes' CPU share during a bench above which it is measured again
    trial_timeout_s: float | None = None
    retry_failed: bool = False
    max_worker_starts: int = 6
    selftest: dict[str, str] = field(default_factory=dict)  # tests: {candidate label: "kill" | "raise"}


class _Worker:
    """One tune-worker job and the folder trials reach it through."""

    def __init__(self, spec: dict, root: Path, n: int) -> None:
        from workbench.core.jobs.client import Job

        self.inbox = root / f"worker-{n}" / "inbox"
        self.scratch = root / f"worker-{n}" / "scratch"
        self.inbox.mkdir(parents=True)
        self.scratch.mkdir(parents=True)
        self.seq = 0
        self.job = Job({**spec, "job": "tune-worker", "inbox": str(self.inbox), "scratch": str(self.scratch)})
        self.ready = False
        self.accounted = False  # the orchestrator has taken its baseline
        self.dead = False
        self.error: dict | None = None
        self.baseline: dict | None = None
        self.context: dict | None = None
        self.trial_result: dict | None = None
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.job.pid

    def send(self, msg: dict) -> None:
        self.seq += 1
        atomic.write_json(self.inbox / f"msg-{self.seq:06d}.json", msg)

    def stop(self, grace: float = 3.0) -> None:
        if self.dead or self.job.proc.poll() is not None:
            self.dead = True
            return
        try:
            self.send({"type": "stop"})
            self.job.proc.wait(timeout=grace)
        except Exception:  # noqa: BLE001
            self.job.cancel()
        self.dead = True

    def kill(self) -> None:
        self.job.cancel()
        self.dead = True


def _sweep_orphans() -> list[str]:
    """Remove the scratch folders (inboxes, weight snapshots) of tunes whose process is gone (killed tunes)."""
    removed = []
    for d in Path(tempfile.gettempdir()).glob("optbench-tune-*"):
        try:
            pid = int((d / "owner.pid").read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(str(d))
        except (OSError, ValueError):
            continue  # no owner file yet, or not ours to judge
    return removed


class Tuner:
    def __init__(self, config: TuneConfig, emit: Emit | None = None) -> None:
        self.cfg = config
        self._emit_cb = emit or (lambda *a, **k: None)
        self._cancel = threading.Event()
        self.worker: _Worker | None = None
        self.workers_started = 0
        self.worker_stats: list[dict] = []
        self.trials: list[dict] = []
        self.by_ident: dict[str, dict] = {}
        self.ctx: dict | None = None
        self.baseline: dict | None = None
        self.baseline_cached = False
        self.model_info: dict | None = None
        self.stopped = "space exhausted"
        self.run_count = 0

    # -- public
    def cancel(self) -> None:
        self._cancel.set()

    def emit(self, type_: str, **payload) -> None:
        payload = jsonable(payload)
        self._emit_cb(type_, **payload)

    # -- helpers
    def _log(self, text: str, level: str = "info") -> None:
        self.emit("log", level=level, text=text)

    def _elapsed(self) -> float:
        return time.monotonic() - self.t_start

    def _deadline(self) -> float:
        """When work must stop: the budget less a reserve for stopping the worker and writing the report."""
        return self.t_start + self.cfg.budget_s - min(5.0, 0.02 * self.cfg.budget_s)

    def _remaining(self) -> float:
        return self._deadline() - time.monotonic()

    def _start_worker(self) -> _Worker:
        if self.workers_started >= self.cfg.max_worker_starts:
            raise JobFailed(f"tune: the worker died {self.workers_started} times; stopping",
                            "see the failed trials' errors; the finished trials are cached")
        self.workers_started += 1
        spec = {"recipe": self.cfg.recipe.to_dict(), "rebaseline_s": self.cfg.rebaseline_s,
                "contention_limit": self.cfg.contention_limit}
        self.worker = _Worker(spec, self.root, self.workers_started)
        self._log(f"worker {self.workers_started} started (pid {self.worker.pid})")
        return self.worker

    def _pump(self, until: Callable[[], bool], deadline: float | None) -> str:
        """Process worker events until ``until()`` is true ("ok"), the worker died ("dead"), the deadline passed
        ("deadline") or the tune was cancelled ("cancelled")."""
        w = self.worker
        while True:
            if until():
                return "ok"
            if w is None or w.dead:
                return "dead"
            if self._cancel.is_set():
                return "cancelled"
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return "deadline"
            wait = 0.2 if deadline is None else max(0.01, min(0.2, deadline - now))
            try:
                event = w.job.events_q.get(timeout=wait)
            except queue.Empty:
                continue
            if event is None:
                w.dead = True
                continue
            self._on_worker_event(w, event)

    def _on_worker_event(self, w: _Worker, event: dict) -> None:
        kind = event.get("type")
        if kind == "progress":
            self._progress(str(event.get("stage", "")), event.get("fraction"))
        elif kind == "log":
            if event.get("level") in ("warning", "error"):
                self._log(str(event.get("text", "")), event.get("level"))
        elif kind == "sample":
            self.emit("sample", **{k: v for k, v in event.items() if k not in ("type", "t")})
        elif kind == "model":
            self.model_info = {k: v for k, v in event.items() if k not in ("type", "t")}
        elif kind == "result":
            phase, report = event.get("phase"), event.get("report") or {}
            if phase == "tune-context":
                w.context = report
            elif phase == "tune-baseline":
                w.baseline = report
                w.ready = True
            elif phase == "trial":
                w.trial_result = report
        elif kind == "error":
            w.error = {k: event.get(k) for k in ("kind", "message", "hint")}
        elif kind == "done":
            w.dead = True

    def _progress(self, stage: str, stage_fraction: float | None = None) -> None:
        """``fraction``: of the whole tune (time or candidates, whichever is further); ``stage_fraction``: of the
        current step inside the worker (loading, applying, benchmarking, evaluating)."""
        decided = len(self.trials)
        total = max(1, len(self.space.candidates)) if getattr(self, "space", None) else 1
        frac = min(1.0, max(self._elapsed() / self.cfg.budget_s, decided / total))
        self.emit("progress", stage=stage, fraction=round(frac, 4), stage_fraction=stage_fraction,
                  trials_run=self.run_count, trials_decided=decided, elapsed_s=round(self._elapsed(), 2),
                  budget_s=self.cfg.budget_s)

    def _worker_failure(self, w: _Worker, where: str) -> OptbenchError:
        err = w.error or {"kind": "crashed", "message": "the worker ended without a result", "hint": ""}
        msg = f"tune worker failed while {where}: {err.get('message')}"
        return InputError(err.get("message") or msg, err.get("hint") or "") if err.get("kind") == "input" \
            else JobFailed(msg, err.get("hint") or "")

    def _ensure_ready(self) -> str:
        """A worker that has measured its baseline. Returns "ok", "deadline" or "cancelled"."""
        while True:
            if self.worker is None or self.worker.dead:
                self._start_worker()
            w = self.worker
            if w.ready and w.accounted:
                return "ok"
            state = self._pump(lambda: w.ready, self._deadline())
            if state == "ok":
                w.accounted = True
                self.baseline = w.baseline["baseline"]
                self.baseline_cached = False
                self.model_info = w.baseline.get("model") or self.model_info
                self.worker_stats.append({"pid": w.pid, "load_seconds": w.baseline.get("load_seconds"),
                                          "baseline_seconds": w.baseline.get("baseline_seconds"),
                                          "snapshot_seconds": w.baseline.get("snapshot_seconds"),
                                          "pristine": w.baseline.get("pristine"),
                                          "ready_seconds": time.monotonic() - w.started})
                cache_save(baseline_key(self.ctx, self.cfg.recipe),
                           {"baseline": self.baseline, "model": self.model_info, "measured_at": time.time()})
                self._check_budget_metrics()
                self._log(f"worker ready in {time.monotonic() - w.started:.1f} s (load "
                          f"{w.baseline.get('load_seconds', 0):.1f} s, baseline "
                          f"{w.baseline.get('baseline_seconds', 0):.1f} s)")
                return "ok"
            if state in ("deadline", "cancelled"):
                w.kill()
                return state
            raise self._worker_failure(w, "loading the model and measuring the baseline")

    def _check_budget_metrics(self, metrics: set | None = None) -> None:
        if metrics is None:
            metrics = set((self.baseline or {}).get("metrics") or {}) & set(HIGHER_IS_BETTER)
        acc = self.cfg.accuracy
        if self.cfg.recipe.eval.source == "none":
            if acc.default is not None or acc.per_metric:
                raise InputError("--eval none: no accuracy is measured, so --max-accuracy-drop cannot be checked; "
                                 "expected an eval source (builtin, a file, hf:NAME)")
            return
        if acc.default is None and acc.per_metric and not (set(acc.per_metric) & metrics):
            raise InputError(f"--max-accuracy-drop {acc.text}: none of its metrics is measured for "
                             f"{self.ctx.get('task')} models; expected one of: {', '.join(sorted(metrics))}")

    # -- trial bookkeeping
    def _summary(self, cand: Candidate, raw: dict, cached: bool, ran: bool) -> dict:
        info = self.objective
        measured = raw.get("measured") or {}
        base_phase = raw.get("baseline") or self.baseline or {}
        value = dotted(measured, info["metric"])
        base_value = dotted(base_phase, info["metric"])
        acc = check_accuracy(raw.get("accuracy") or {}, self.cfg.accuracy) if raw.get("accuracy") is not None \
            else None
        mem = dotted(measured, memory_metric(self.ctx["device"]))
        mem_ok = self.cfg.memory_mb is None or (mem is not None and mem <= self.cfg.memory_mb)
        status = raw.get("status", "failed")
        feasible = status == "finished" and acc is not None and acc["ok"] and mem_ok
        reason = raw.get("reason")
        if status == "finished" and not feasible:
            why = []
            if acc is not None and not acc["ok"]:
                bad = [f"{m} drop {r['drop']:.4g} > {r['allowed']:.4g}" for m, r in acc["rows"].items()
                       if not r["ok"]]
                why.append("accuracy: " + "; ".join(bad))
            if not mem_ok:
                why.append(f"memory {mem} MB > cap {self.cfg.memory_mb} MB")
            reason = "; ".join(why) or reason
        return {
            "id": len(self.trials) + 1, "label": cand.label, "recipe": cand.steps, "phase": _PHASES[cand.phase],
            "cost": cand.cost, "status": status, "cached": cached, "ran": ran, "reason": reason,
            "error": raw.get("error"), "objective": value, "baseline_objective": base_value,
            "gain": gain(value, base_value, info["direction"]),
            "accuracy": acc["rows"] if acc else {}, "accuracy_ok": acc["ok"] if acc else None,
            "budget_used": acc["budget_used"] if acc else None,
            "memory_mb": mem, "model_size_mb": dotted(measured, "model_size_mb"),
            "latency_p50_ms": dotted(measured, "latency_ms.p50"), "ttft_p50_ms": dotted(measured, "ttft_ms.p50"),
            "decode_ms_per_token_p50": dotted(measured, "decode_ms_per_token.p50"),
            "throughput": dotted(measured, "throughput.value"), "feasible": feasible,
            "others_cpu": measured.get("others_cpu"),
            "contended": (measured.get("others_cpu") or 0) > self.cfg.contention_limit,
            "seconds": raw.get("seconds", 0.0), "apply_seconds": raw.get("apply_seconds"),
            "bench_seconds": raw.get("bench_seconds"), "eval_seconds": measured.get("eval_seconds"),
            "key": raw.get("_key"),
        }

    def _record(self, cand: Candidate, raw: dict, cached: bool, ran: bool) -> dict:
        summary = self._summary(cand, raw, cached, ran)
        self.trials.append(summary)
        self.by_ident[cand.ident] = summary
        self.emit("trial", **summary)
        self.emit("frontier", **self._frontier_payload())
        self._progress(f"trial {summary['id']} {summary['status']}")
        return summary

    def _best_feasible(self) -> dict | None:
        feas = [t for t in self.trials if t["feasible"] and t.get("gain") is not None]
        return min(feas, key=lambda t: (-t["gain"], t["id"])) if feas else None

    def _stop_rule(self) -> dict:
        """What a trial must come close to: the best feasible gain, or the baseline's (x1) before any."""
        best = self._best_feasible()
        best_gain = max(1.0, best["gain"]) if best else 1.0
        info = self.objective
        return {"metric": info["metric"], "direction": info["direction"], "name": info["name"], "unit": info["unit"],
                "gain_threshold": gain_threshold(best_gain, self.cfg.prune_margin),
                "memory_cap": self.cfg.memory_mb, "memory_metric": memory_metric(self.ctx["device"])}

    def _frontier_points(self) -> list[dict]:
        pts = []
        base_value = dotted(self.baseline, self.objective["metric"]) if self.baseline else None
        if base_value is not None:
            pts.append({"id": 0, "label": "baseline", "recipe": [], "objective": base_value, "gain": 1.0,
                        "budget_used": 0.0, "accuracy": {}, "feasible": True, "baseline": True})
        for t in self.trials:
            if t["status"] == "finished" and t["gain"] is not None and t["budget_used"] is not None:
                pts.append({**t, "baseline": False})
        return pts

    def _frontier_payload(self) -> dict:
        front = pareto_frontier(self._frontier_points(), "max", objective_key="gain")
        return {"frontier": front, "best": choose(self.trials, self.cfg.min_gain),
                "baseline_objective": dotted(self.baseline, self.objective["metric"]) if self.baseline else None,
                "objective": self.objective}

    # -- candidate selection and gating
    def _predicted_gain(self, cand: Candidate) -> float:
        g = 1.0
        for s in cand.steps:
            t = self.by_ident.get(canon([s]))
            if t is not None and t.get("gain"):
                g *= t["gain"]
        return g

    def _next(self, pending: list[Candidate]) -> Candidate | None:
        if not pending:
            return None
        return min(pending, key=lambda c: (c.cost, c.phase, -self._predicted_gain(c) if c.phase >= 2 else 0.0,
                                           c.index))

    def _gate(self, cand: Candidate) -> str | None:
        """A reason not to run a combination, from its parts' results; None to run it."""
        if cand.phase < 2:
            return None
        name = self.objective["name"]
        for s in cand.steps:
            ident = canon([s])
            t = self.by_ident.get(ident)
            label = t["label"] if t else s["name"]
            if t is None:
                if ident not in self.singles:
                    return f"{s['name']} with these parameters is not in the search space on its own"
                return None  # not measured yet; it will be before this (ordering), run regardless
            if t["status"] in ("failed", "cancelled"):
                return f"{label} failed on its own ({(t.get('error') or {}).get('kind', t['status'])})"
            if t["status"] == "finished" and t["accuracy_ok"] is False:
                return f"{label} alone already exceeds the accuracy budget ({t['reason']})"
            if t.get("gain") is not None and t["gain"] < 1 + self.cfg.min_gain:
                return f"{label} alone does not improve {name} (x{t['gain']:.3f} vs baseline; needs " \
                       f"x{1 + self.cfg.min_gain:.2f})"
        # a measured sub-combination that was already over the accuracy budget
        n = len(cand.steps)
        for r in range(2, n):
            for sub in itertools.combinations(cand.steps, r):
                t = self.by_ident.get(canon(list(sub)))
                if t is not None and t["status"] == "finished" and t["accuracy_ok"] is False:
                    return f"{t['label']} already exceeds the accuracy budget"
        # predicted from its parts (gains multiply): too far from the best to be worth a trial
        parts = [self.by_ident.get(canon([s])) for s in cand.steps]
        best = self._best_feasible()
        if best is not None and best.get("gain") and all(t is not None and t.get("gain") for t in parts):
            predicted = math.prod(t["gain"] for t in parts)
            if predicted * (1 + self.cfg.predict_margin) < best["gain"]:
                detail = ", ".join(f"{t['label']} x{t['gain']:.2f}" for t in parts)
                return f"predicted x{predicted:.2f} from its parts ({detail}) is more than " \
                       f"{100 * self.cfg.predict_margin:.0f} % short of the best (x{best['gain']:.2f})"
        return None

    def _cached_usable(self, doc: dict) -> bool:
        status = doc.get("status")
        if status == "finished":
            return True
        if status == "failed":
            return not self.cfg.retry_failed and (doc.get("error") or {}).get("kind") not in ("cancelled", "timeout")
        if status == "pruned":  # reuse only when today's rules would prune it again from what it measured
            rule = self._stop_rule()
            measured = doc.get("measured") or {}
            g = gain(dotted(measured, rule["metric"]), dotted(doc.get("baseline"), rule["metric"]), rule["direction"])
            if g is not None and g < rule["gain_threshold"]:
                return True
            mem = dotted(measured, rule["memory_metric"])
            return rule["memory_cap"] is not None and mem is not None and mem > rule["memory_cap"]
        return False

    # -- the run
    def run(self) -> dict:
        self.t_start = time.monotonic()
        started = time.time()
        _sweep_orphans()
        self.root = Path(tempfile.mkdtemp(prefix="optbench-tune-"))
        (self.root / "owner.pid").write_text(str(os.getpid()))
        try:
            return self._run(started)
        except BaseException:
            if self.worker is not None:
                self.worker.kill()
            raise
        finally:
            if self.worker is not None and not self.worker.dead:
                if self.worker.ready:
                    self.worker.stop()
                else:  # still loading (everything came from the cache): nothing to wait for
                    self.worker.kill()
            shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, started: float) -> dict:
        cfg = self.cfg
        w = self._start_worker()
        state = self._pump(lambda: w.context is not None, self._deadline())
        if state == "cancelled":
            raise KeyboardInterrupt
        if state != "ok":
            if state == "deadline":
                raise JobFailed("tune: the time budget ended before the model was even inspected",
                                "give a larger --budget")
            raise self._worker_failure(w, "inspecting the model")
        self.ctx = w.context
        task, device = self.ctx["task"], self.ctx["device"]
        self.objective = objective_info(cfg.objective, task, device)
        self.space = build_space(task, device, cfg.opts, cfg.max_space)
        self.singles = {c.ident: c for c in self.space.candidates if c.phase < 2}
        self._check_budget_metrics(set(TASK_METRICS.get(task, HIGHER_IS_BETTER)))  # before loading anything
        hit = cache_load(baseline_key(self.ctx, cfg.recipe))
        if hit is not None:
            self.baseline, self.baseline_cached = hit.get("baseline"), True
            self.model_info = hit.get("model")
            self._check_budget_metrics()
        constraints = {"max_accuracy_drop": cfg.accuracy.describe(), "memory_mb": cfg.memory_mb,
                       "budget_s": cfg.budget_s, "min_gain": cfg.min_gain, "prune_margin": cfg.prune_margin,
                       "memory_metric": memory_metric(device)}
        self.emit("tune-start", model=cfg.recipe.model.ref, task=task, device=device, objective=self.objective,
                  constraints=constraints, budget_s=cfg.budget_s, max_trials=cfg.max_trials,
                  space={k: v for k, v in self.space.counts.items() if k != "capped_labels"},
                  candidates=[c.label for c in self.space.candidates], skipped=self.space.skipped)
        self._log(f"search space: {self.space.counts['size']} candidates ({self.space.counts['singles']} single, "
                  f"{self.space.counts['pairs']} pairs, {self.space.counts['triples']} triples), "
                  f"{len(self.space.skipped)} skipped, {self.space.counts['capped']} over the cap")
        pending = list(self.space.candidates)
        durations: list[float] = []
        while pending:
            if self._cancel.is_set():
                self.stopped = "cancelled"
                break
            cand = self._next(pending)
            pending.remove(cand)
            reason = self._gate(cand)
            if reason:
                self._record(cand, {"status": "pruned", "reason": reason}, cached=False, ran=False)
                continue
            selftest = cfg.selftest.get(cand.label)
            key = trial_key(self.ctx, cfg.recipe, cand.steps, selftest)
            doc = cache_load(key)
            if doc is not None and self._cached_usable(doc):
                self._record(cand, {**doc, "_key": key}, cached=True, ran=False)
                continue
            if cfg.max_trials is not None and self.run_count >= cfg.max_trials:
                self.stopped = "max trials"
                pending.append(cand)
                break
            if self._remaining() <= 0:
                self.stopped = "budget"
                pending.append(cand)
                break
            est = sorted(durations)[len(durations) // 2] if durations else None
            if est is not None and self.worker is not None and self.worker.ready and not self.worker.dead \
                    and est > self._remaining():
                self.stopped = "budget"
                self._log(f"stopping: the next trial ({cand.label}) would take about {est:.0f} s and "
                          f"{self._remaining():.0f} s are left")
                pending.append(cand)
                break
            state = self._ensure_ready()
            if state != "ok":
                self.stopped = "budget" if state == "deadline" else "cancelled"
                pending.append(cand)
                break
            raw = self._run_one(cand, key, selftest)
            if raw.get("status") == "cancelled":
                self._record(cand, raw, cached=False, ran=True)
                self.stopped = "cancelled" if self._cancel.is_set() else "budget"
                break
            durations.append(raw.get("seconds") or 0.0)
            self._record(cand, raw, cached=False, ran=True)
        return self._report(started, pending)

    def _run_one(self, cand: Candidate, key: str, selftest: str | None) -> dict:
        w = self.worker
        self.run_count += 1
        tid = len(self.trials) + 1
        self.emit("trial-start", id=tid, label=cand.label, recipe=cand.steps, cost=cand.cost,
                  phase=_PHASES[cand.phase], worker_pid=w.pid)
        self._progress(f"trial {tid}: {cand.label}")
        msg = {"type": "trial", "id": tid, "recipe": cand.steps, "stop": self._stop_rule()}
        if selftest:
            msg["selftest"] = selftest
        w.trial_result = None
        t0 = time.monotonic()
        w.send(msg)
        deadline = self._deadline()
        timeout_at = t0 + self.cfg.trial_timeout_s if self.cfg.trial_timeout_s else None
        if timeout_at is not None and timeout_at < deadline:
            deadline = timeout_at
        state = self._pump(lambda: w.trial_result is not None, deadline)
        seconds = time.monotonic() - t0
        if state == "ok":
            raw = dict(w.trial_result)
            raw["seconds"] = seconds
            if raw.get("status") != "cancelled":
                cache_save(key, {k: v for k, v in raw.items() if k != "_key"})
            newer = raw.get("baseline") or {}
            if (newer.get("measured_at") or 0) > ((self.baseline or {}).get("measured_at") or 0):
                self.baseline = newer
                cache_save(baseline_key(self.ctx, self.cfg.recipe),
                           {"baseline": self.baseline, "model": self.model_info, "measured_at": time.time()})
            raw["_key"] = key
            return raw
        if state == "dead":
            err = w.error or {"kind": "crashed", "message": "the worker ended without a result", "hint": ""}
            self._log(f"worker died during trial {tid} ({cand.label}): {err.get('message')}", "warning")
            raw = {"status": "failed", "error": err, "reason": err.get("message"), "seconds": seconds}
            cache_save(key, raw)
            return {**raw, "_key": key}
        w.kill()
        if state == "deadline" and timeout_at is not None and time.monotonic() >= timeout_at - 0.05 \
                and self._remaining() > 0:
            err = {"kind": "timeout", "message": f"the trial took longer than {self.cfg.trial_timeout_s:.0f} s",
                   "hint": "raise --trial-timeout"}
            return {"status": "failed", "error": err, "reason": err["message"], "seconds": seconds, "_key": key}
        why = "the tune was cancelled" if state == "cancelled" else "the time budget ran out during this trial"
        return {"status": "cancelled", "reason": why, "error": {"kind": "cancelled", "message": why, "hint": ""},
                "seconds": seconds, "_key": key}

    def _report(self, started: float, pending: list[Candidate]) -> dict:
        cfg = self.cfg
        payload = self._frontier_payload()
        counts = {s: sum(1 for t in self.trials if t["status"] == s) for s in STATUSES}
        counts.update({"run": sum(1 for t in self.trials if t["ran"]),
                       "contended": sum(1 for t in self.trials if t["ran"] and t.get("contended")),
                       "cached": sum(1 for t in self.trials if t["cached"]),
                       "not_run": len(pending), "decided": len(self.trials),
                       "feasible": sum(1 for t in self.trials if t["feasible"])})
        ran = [t["seconds"] for t in self.trials if t["ran"] and t["status"] != "cancelled"]
        chosen = payload["best"]
        report = {
            "schema": SCHEMA, "kind": "tune", "ok": chosen is not None,
            "model": self.model_info or {"ref": cfg.recipe.model.ref}, "task": self.ctx["task"],
            "device": self.ctx["device"], "environment": self.ctx.get("environment"),
            "objective": self.objective,
            "constraints": {"max_accuracy_drop": cfg.accuracy.describe(), "memory_mb": cfg.memory_mb,
                            "memory_metric": memory_metric(self.ctx["device"]), "budget_s": cfg.budget_s,
                            "max_trials": cfg.max_trials, "min_gain": cfg.min_gain,
                            "prune_margin": cfg.prune_margin, "contention_limit": cfg.contention_limit},
            "bench": asdict(cfg.recipe.bench), "eval": asdict(cfg.recipe.eval),
            "baseline": {"objective": payload["baseline_objective"], "cached": self.baseline_cached,
                         **(self.baseline or {})},
            "unconstrained_metrics": {m: n for m, n in ((m, cfg.accuracy.limit_for(m)[1]) for m in
                                                        sorted(set((self.baseline or {}).get("metrics") or {})
                                                               & set(HIGHER_IS_BETTER))) if n},
            "space": {k: v for k, v in self.space.counts.items()},
            "skipped": self.space.skipped,
            "trials": self.trials,
            "frontier": payload["frontier"],
            "chosen": chosen,
            "chosen_recipe": ({**cfg.recipe.to_dict(), "optimizations": chosen["recipe"]} if chosen else None),
            "counts": counts,
            "not_run": [c.label for c in sorted(pending, key=lambda c: (c.cost, c.phase, c.index))][:50],
            "stopped": self.stopped,
            "workers": {"started": self.workers_started, "details": self.worker_stats,
                        "trial_seconds_median": sorted(ran)[len(ran) // 2] if ran else None},
            "started": started, "seconds": self._elapsed(),
        }
        self.emit("result", phase="tune", report=report)
        return report


def tune(config: TuneConfig, emit: Emit | None = None) -> dict:
    return Tuner(config, emit).run()
