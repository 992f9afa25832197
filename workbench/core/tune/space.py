"""Tune's search space: the candidate recipes for a task and device, in their running order, and the skips with
their reasons. Torch-free; docs/tune.md ("Search space") describes the rules."""

from __future__ import annotations

import importlib.util
import itertools
import json
from dataclasses import dataclass
from typing import Any

from workbench.core import optimizations
from workbench.core.errors import InputError
from workbench.core.optimizations.base import STAGES
from workbench.core.recipe import ModelSpec, OptStep, Recipe

# Cost classes (cheap and usually promising first, training last) are each optimization's own ``OptSpec.cost``.
EMULATED_COST = 4.0  # added to a step this CPU can only emulate: ordered after training-class trials
CALIBRATED_COST = 1.5  # added to a calibrated quantizer (GPTQ, AWQ): minutes at 7B+, after pruning's trials
PHASES = ("single", "single", "pair", "triple")
# On CUDA, decode at batch 1 through eager PyTorch is bound by kernel launches, not by the bytes a weight format
# moves: at 8B on an H200 every quantized single timed eagerly lost to the eager bf16 baseline (int4 0.80x) while
# the same int4 under graph-decode made 290 tok/s against 47. So on CUDA the search measures weight changes under
# graph-decode (the anchor): it runs first, and each candidate it combines with is timed with it appended.
ANCHOR = "graph-decode"
ANCHOR_COST = -1.0  # the anchor's own trials run before everything else
FALLBACK_COST = 6.0  # the eager form of an anchored candidate: run only if the anchor failed on its own


@dataclass
class Candidate:
    steps: list[dict]  # resolved: [{"name", "params"}]
    label: str
    phase: int  # 0 single at default values, 1 single variant, 2 pair, 3 triple
    cost: float
    index: int = 0
    # anchored (CUDA): the anchor's ident, and the ident of each part's anchored single (gating, prediction)
    anchor: str | None = None
    parts: list[str] | None = None
    fallback: str | None = None  # the eager form of an anchored candidate: the anchor's ident it stands in for

    @property
    def ident(self) -> str:
        return canon(self.steps)

    def part_idents(self) -> list[str]:
        """The singles this candidate is made of, as the search measures them (anchored ones on CUDA)."""
        return list(self.parts) if self.parts is not None else [canon([s]) for s in self.steps]

    def describe(self) -> dict:
        out = {"label": self.label, "recipe": self.steps, "phase": PHASES[self.phase], "cost": self.cost}
        if self.anchor:
            out["anchored"] = True
        if self.fallback:
            out["fallback"] = True
        return out


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
    cost = spec.cost
    if params.get("importance") == "gradient" or (spec.name == "drop-layers" and params.get("which") == "importance"):
        cost += 0.5
    if spec.name == "int8-selective" and params.get("keep") == -1:
        cost += 0.5
    steps_param = spec.param("steps")
    if steps_param is not None and isinstance(params.get("steps"), int) and params["steps"] > steps_param.default:
        cost += 0.5
    if spec.name == "compile" and params.get("mode") != "default":
        cost += 0.2
    if params.get("algorithm") in CALIBRATED:
        cost += CALIBRATED_COST
    return round(cost, 3)


CALIBRATED = ("gptq", "awq", "awq-gptq")


def _values(p, dev_kind: str) -> tuple:
    """The values a tuner tries for parameter ``p`` on ``dev_kind``: its CUDA values there, and only those whose
    module imports here."""
    values = (p.search_cuda if dev_kind == "cuda" and p.search_cuda else p.search) or ()
    needs = dict(p.search_needs)
    return tuple(v for v in values if v not in needs or _importable(needs[v]))


def _grid(spec, dev_kind: str) -> list[dict]:
    """Every combination of the searchable values; the one equal to the defaults first."""
    searched = [(p, _values(p, dev_kind)) for p in spec.params if _values(p, dev_kind)]
    if not searched:
        return [{}]
    combos = [dict(zip([p.name for p, _ in searched], values))
              for values in itertools.product(*[vals for _, vals in searched])]
    default = {p.name: p.default for p, _ in searched}
    combos.sort(key=lambda c: c != default)  # stable: the default first, then product order
    return combos


def _combo_values(spec, dev_kind: str) -> list[dict]:
    """Values used in combinations: the first parameter with several search values varies, the rest at default."""
    searched = [(p, _values(p, dev_kind)) for p in spec.params if _values(p, dev_kind)]
    base = {p.name: (p.default if p.default in vals else vals[0]) for p, vals in searched}
    vary = next(((p, vals) for p, vals in searched if len(vals) > 1), None)
    if vary is None:
        return [base]
    p, vals = vary
    values = sorted(vals, key=lambda v: v != base[p.name])  # the default first
    return [{**base, p.name: v} for v in values]


def _importable(mod: str) -> bool:
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


def _requires_missing(spec) -> list[str]:
    return [mod for mod in spec.requires if not _importable(mod)]


def build_space(task: str, device: str, opts: list[str] | None = None, max_space: int = 400,
                pairs: bool = True, triples: bool = True) -> Space:
    """Candidate recipes for ``task`` on ``device`` (docs/tune.md, "Search space"). Torch-free."""
    dev_kind = "cuda" if str(device).startswith("cuda") else "cpu"
    specs = optimizations.all_specs()
    if opts:
        known = {s.name for s in specs}
        for name in opts:
            if name not in known:
                raise InputError(f"{name}: unknown optimization; expected one of: "
                                 f"{', '.join(s.name for s in specs)}", param="opts")
        specs = [s for s in specs if s.name in set(opts)]
    skipped: list[dict] = []
    avail = []
    for spec in specs:
        reason = None
        if task not in spec.tasks:
            reason = f"does not apply to {task} models (only {', '.join(spec.tasks)})"
        elif dev_kind not in spec.devices:
            reason = f"does not run on {dev_kind} (only {', '.join(spec.devices)})"
        elif spec.tune_devices is not None and dev_kind not in spec.tune_devices:
            reason = f"not searched on {dev_kind}: {spec.tune_reason}"
        else:
            missing = _requires_missing(spec)
            if missing:
                reason = f"needs the Python module {', '.join(missing)}, which is not importable here"
        if reason:
            skipped.append({"label": spec.name, "recipe": [{"name": spec.name, "params": {}}], "reason": reason})
        else:
            avail.append(spec)

    def searched_names(spec) -> tuple[str, ...]:  # the parameters a label shows: those the search varies
        return tuple(p.name for p in spec.params if len(_values(p, dev_kind)) > 1)

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

    # The anchor (CUDA, causal LMs): graph-decode at its default values, appended to every candidate it combines
    # with; that candidate's eager form stays in the space as a fallback, run only if the anchor itself failed.
    anchor_spec = next((s for s in avail if s.name == ANCHOR), None) if dev_kind == "cuda" else None
    anchor = make([(anchor_spec, _combo_values(anchor_spec, dev_kind)[0])], 0) if anchor_spec is not None else None
    if not isinstance(anchor, Candidate):
        anchor = None
    anchor_params = anchor.steps[0]["params"] if anchor else None

    def anchored(parts: list[tuple[Any, dict]]) -> Candidate | None:
        if anchor is None or any(spec.name == ANCHOR for spec, _ in parts):
            return None
        c = make(sorted(parts + [(anchor_spec, anchor_params)], key=lambda p: STAGES[p[0].stage]), 0)
        return c if isinstance(c, Candidate) else None  # conflicts with the anchor (kv-cache...): eager only

    def offer(parts: list[tuple[Any, dict]], phase: int) -> bool:
        """Add the candidate made of ``parts`` (anchored where the anchor combines with it); True if one was."""
        eager = make(parts, phase)
        if not isinstance(eager, Candidate):
            add(eager)
            return False
        if any(spec.name == ANCHOR for spec, _ in parts):
            eager.cost = ANCHOR_COST if len(parts) == 1 else eager.cost
            add(eager)
            return True
        a = anchored(parts)
        if a is None:
            # Kept as a fallback (run only if the anchor fails): a weight change with a step the anchor excludes
            # (kv-cache, compile), an eager route like the weight change's own eager single; and a weight change
            # the anchor refuses (int8-dynamic-act on CUDA), which eagerly cannot beat it at batch-1 decode
            with_excluded = len(parts) > 1 and any(anchored([p]) is not None for p in parts)
            refused = len(parts) == 1 and STAGES[parts[0][0].stage] < STAGES["runtime"]
            if anchor is not None and (with_excluded or refused):
                eager.cost, eager.fallback = round(eager.cost + FALLBACK_COST, 3), anchor.ident
            add(eager)
            return True
        a.label, a.phase, a.cost, a.anchor = f"{eager.label} + {ANCHOR}", phase, eager.cost, anchor.ident
        singles_of = [anchored([p]) for p in parts]
        a.parts = [x.ident if x is not None else canon([s]) for x, s in zip(singles_of, eager.steps)]
        eager.cost, eager.fallback = round(eager.cost + FALLBACK_COST, 3), anchor.ident
        add(a)
        add(eager)
        return True

    counts = {"singles": 0, "pairs": 0, "triples": 0}
    for spec in avail:
        for i, params in enumerate(_grid(spec, dev_kind)):
            counts["singles"] += offer([(spec, params)], 0 if i == 0 else 1)
    others = [s for s in avail if s is not anchor_spec] if anchor else avail
    if pairs:
        for a, b in itertools.combinations(others, 2):
            if STAGES[a.stage] == STAGES[b.stage]:
                continue
            a, b = sorted((a, b), key=lambda s: STAGES[s.stage])
            for pa, pb in itertools.product(_combo_values(a, dev_kind), _combo_values(b, dev_kind)):
                counts["pairs"] += offer([(a, pa), (b, pb)], 2)
    if triples:
        for trio in itertools.combinations(others, 3):
            if len({STAGES[s.stage] for s in trio}) < 3:
                continue
            trio = sorted(trio, key=lambda s: STAGES[s.stage])
            counts["triples"] += offer([(s, _combo_values(s, dev_kind)[0]) for s in trio], 3)
    for i, c in enumerate(made):
        c.index = i
    # The cap keeps singles first (cheapest first; eager fallbacks after the others, so a failed anchor still
    # leaves every single to run), then pairs, then triples (fallbacks last again); the run order is by cost.
    made.sort(key=lambda c: (c.phase >= 2, c.fallback is not None, c.phase, c.cost, c.index))
    capped = made[max_space:] if max_space and len(made) > max_space else []
    made = made[:max_space] if max_space else made
    made.sort(key=lambda c: (c.cost, c.phase, c.index))
    for i, c in enumerate(made):
        c.index = i
    counts.update({"size": len(made), "capped": len(capped), "capped_labels": [c.label for c in capped[:20]],
                   "skipped": len(skipped)})
    if anchor is not None:
        counts["anchor"] = {"label": anchor.label, "recipe": anchor.steps, "reason": "on CUDA a weight change is "
                            "timed under graph-decode (eager decode is launch-bound); eager forms run only if "
                            "graph-decode fails"}
    if emulated:
        counts["ordered_last"] = {"names": sorted(emulated), "reason": "no native bfloat16 matmuls on this CPU "
                                  "(AVX512-BF16/AMX absent or capped): the cast runs emulated"}
    return Space(made, skipped, counts, task, str(device))


def model_skips(candidates: list[Candidate], model: dict) -> list[tuple[Candidate, str]]:
    """The candidates with a step that does nothing or cannot run on this model (``OptSpec.model_reason`` over the
    loaded model's facts: a cast to the dtype it already has, autocast on half-precision weights), with the reason.
    Known only once the model is loaded, so the orchestrator applies it after the baseline. Torch-free."""
    out = []
    for c in candidates:
        for step in c.steps:
            spec = optimizations.get(step["name"])
            reason = spec.model_reason(step["params"], model) if spec.model_reason else None
            if reason:
                out.append((c, reason))
                break
    return out
