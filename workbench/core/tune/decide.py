"""Tune's per-trial decisions, as pure functions of what is known so far: a trial's summary, the best feasible
trial, the stop rule a worker applies inside a trial, whether a combination is worth running, whether a cached
trial can be reused, and the frontier. docs/tune.md ("Running order and early stopping", "Trial cache")."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from workbench.core.tune.budget import (check_accuracy, choose, dotted, gain, gain_threshold, memory_metric,
                                        pareto_frontier)
from workbench.core.tune.space import PHASES, Candidate, canon

if TYPE_CHECKING:
    from workbench.core.tune.orchestrator import TuneConfig


def summarize(cand: Candidate, raw: dict, *, trial_id: int, cached: bool, ran: bool, objective: dict,
              baseline: dict | None, device: str, cfg: TuneConfig) -> dict:
    """The ``trial`` event's payload for one decided candidate, from the worker's (or the cache's) raw result."""
    measured = raw.get("measured") or {}
    base_phase = raw.get("baseline") or baseline or {}
    value = dotted(measured, objective["metric"])
    base_value = dotted(base_phase, objective["metric"])
    acc = check_accuracy(raw.get("accuracy") or {}, cfg.accuracy) if raw.get("accuracy") is not None \
        else None
    mem = dotted(measured, memory_metric(device))
    mem_ok = cfg.memory_mb is None or (mem is not None and mem <= cfg.memory_mb)
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
            why.append(f"memory {mem} MB > cap {cfg.memory_mb} MB")
        reason = "; ".join(why) or reason
    return {
        "id": trial_id, "label": cand.label, "recipe": cand.steps, "phase": PHASES[cand.phase],
        "cost": cand.cost, "status": status, "cached": cached, "ran": ran, "reason": reason,
        "error": raw.get("error"), "objective": value, "baseline_objective": base_value,
        "gain": gain(value, base_value, objective["direction"]),
        "accuracy": acc["rows"] if acc else {}, "accuracy_ok": acc["ok"] if acc else None,
        "budget_used": acc["budget_used"] if acc else None,
        "memory_mb": mem, "model_size_mb": dotted(measured, "model_size_mb"),
        "latency_p50_ms": dotted(measured, "latency_ms.p50"), "ttft_p50_ms": dotted(measured, "ttft_ms.p50"),
        "decode_ms_per_token_p50": dotted(measured, "decode_ms_per_token.p50"),
        "throughput": dotted(measured, "throughput.value"), "feasible": feasible,
        "others_cpu": measured.get("others_cpu"),
        "contended": (measured.get("others_cpu") or 0) > cfg.contention_limit,
        "seconds": raw.get("seconds", 0.0), "apply_seconds": raw.get("apply_seconds"),
        "bench_seconds": raw.get("bench_seconds"), "eval_seconds": measured.get("eval_seconds"),
        "key": raw.get("_key"),
    }


def best_feasible(trials: list[dict]) -> dict | None:
    feas = [t for t in trials if t["feasible"] and t.get("gain") is not None]
    return min(feas, key=lambda t: (-t["gain"], t["id"])) if feas else None


def stop_rule(objective: dict, best: dict | None, cfg: TuneConfig, device: str) -> dict:
    """What a trial must come close to: the best feasible gain, or the baseline's (x1) before any."""
    best_gain = max(1.0, best["gain"]) if best else 1.0
    return {"metric": objective["metric"], "direction": objective["direction"], "name": objective["name"],
            "unit": objective["unit"], "gain_threshold": gain_threshold(best_gain, cfg.prune_margin),
            "memory_cap": cfg.memory_mb, "memory_metric": memory_metric(device)}


def frontier_points(trials: list[dict], baseline: dict | None, objective: dict) -> list[dict]:
    pts = []
    base_value = dotted(baseline, objective["metric"]) if baseline else None
    if base_value is not None:
        pts.append({"id": 0, "label": "baseline", "recipe": [], "objective": base_value, "gain": 1.0,
                    "budget_used": 0.0, "accuracy": {}, "feasible": True, "baseline": True})
    for t in trials:
        if t["status"] == "finished" and t["gain"] is not None and t["budget_used"] is not None:
            pts.append({**t, "baseline": False})
    return pts


def frontier_payload(trials: list[dict], baseline: dict | None, objective: dict, min_gain: float) -> dict:
    """The ``frontier`` event's payload."""
    front = pareto_frontier(frontier_points(trials, baseline, objective), "max", objective_key="gain")
    return {"frontier": front, "best": choose(trials, min_gain),
            "baseline_objective": dotted(baseline, objective["metric"]) if baseline else None,
            "objective": objective}


def _anchor_gain(cand: Candidate, by_ident: dict[str, dict]) -> float | None:
    t = by_ident.get(cand.anchor) if cand.anchor else None
    return t["gain"] if t is not None and t.get("gain") else None


def predicted_gain(cand: Candidate, by_ident: dict[str, dict]) -> float:
    """The product of the measured gains of the candidate's parts (1 for a part not measured). For an anchored
    candidate each part was measured with the anchor, so the anchor's own gain counts once, not once per part."""
    g = 1.0
    parts = cand.part_idents()
    for ident in parts:
        t = by_ident.get(ident)
        if t is not None and t.get("gain"):
            g *= t["gain"]
    a = _anchor_gain(cand, by_ident)
    if a is not None and len(parts) > 1:
        g /= a ** (len(parts) - 1)
    return g


def gate(cand: Candidate, by_ident: dict[str, dict], singles: dict, best: dict | None, objective_name: str,
         cfg: TuneConfig) -> str | None:
    """A reason not to run a candidate, from what is already measured; None to run it. Combinations are gated by
    their parts; an eager fallback runs only when its anchor (graph-decode on CUDA) failed on its own."""
    if cand.fallback:
        t = by_ident.get(cand.fallback)
        if anchor_verdict(t, cfg) is None:
            return f"timed under {t['label'] if t else 'the anchor'} instead (eager decode on CUDA is " \
                   f"launch-bound); this eager form runs only if that fails or does not help"
        return None if cand.phase < 2 else _gate_parts(cand, by_ident, singles, best, objective_name, cfg,
                                                       1.0, "baseline")
    base_gain, base_name = 1.0, "baseline"
    if cand.anchor:
        t = by_ident.get(cand.anchor)
        verdict = anchor_verdict(t, cfg)
        if verdict is not None:
            return verdict + "; its eager forms run instead"
        if t is not None and t.get("gain"):
            base_gain, base_name = t["gain"], t["label"]
    if cand.phase < 2:
        return None
    return _gate_parts(cand, by_ident, singles, best, objective_name, cfg, base_gain, base_name)


def anchor_verdict(t: dict | None, cfg: TuneConfig) -> str | None:
    """Why the anchor's trial rules it out (failed, or no gain of its own), or None while it stands or is not
    decided yet (it runs first)."""
    if t is None:
        return None
    if t["status"] in ("failed", "cancelled"):
        return f"{t['label']} failed on its own ({(t.get('error') or {}).get('kind', t['status'])})"
    if t.get("gain") is not None and t["gain"] < 1 + cfg.min_gain:
        return f"{t['label']} alone does not improve on the baseline (x{t['gain']:.3f})"
    return None


def _gate_parts(cand: Candidate, by_ident: dict[str, dict], singles: dict, best: dict | None,
                objective_name: str, cfg: TuneConfig, base_gain: float, base_name: str) -> str | None:
    for ident, s in zip(cand.part_idents(), [s for s in cand.steps if canon([s]) != cand.anchor]):
        t = by_ident.get(ident)
        label = t["label"] if t else s["name"]
        if t is None:
            if ident not in singles:
                return f"{s['name']} with these parameters is not in the search space on its own"
            return None  # not measured yet; it will be before this (ordering), run regardless
        if t["status"] in ("failed", "cancelled"):
            return f"{label} failed on its own ({(t.get('error') or {}).get('kind', t['status'])})"
        if t["status"] == "finished" and t["accuracy_ok"] is False:
            return f"{label} alone already exceeds the accuracy budget ({t['reason']})"
        if t.get("gain") is not None and t["gain"] < base_gain * (1 + cfg.min_gain):
            return f"{label} alone does not improve {objective_name} (x{t['gain']:.3f} vs {base_name}" \
                   f"{'' if base_name == 'baseline' else f' x{base_gain:.3f}'}; needs " \
                   f"x{base_gain * (1 + cfg.min_gain):.2f})"
    # a measured sub-combination that was already over the accuracy budget
    own = [s for s in cand.steps if canon([s]) != cand.anchor]
    tail = [s for s in cand.steps if canon([s]) == cand.anchor]  # the anchor's step, measured with every sub
    for r in range(2, len(own)):
        for sub in itertools.combinations(own, r):
            t = by_ident.get(canon(list(sub) + tail))
            if t is not None and t["status"] == "finished" and t["accuracy_ok"] is False:
                return f"{t['label']} already exceeds the accuracy budget"
    # predicted from its parts (gains multiply): too far from the best to be worth a trial
    parts = [by_ident.get(ident) for ident in cand.part_idents()]
    if best is not None and best.get("gain") and all(t is not None and t.get("gain") for t in parts):
        predicted = predicted_gain(cand, by_ident)
        if predicted * (1 + cfg.predict_margin) < best["gain"]:
            detail = ", ".join(f"{t['label']} x{t['gain']:.2f}" for t in parts)
            return f"predicted x{predicted:.2f} from its parts ({detail}) is more than " \
                   f"{100 * cfg.predict_margin:.0f} % short of the best (x{best['gain']:.2f})"
    return None


def cached_usable(doc: dict, rule: dict, retry_failed: bool) -> bool:
    """Whether a cached trial stands: finished ones always, failures unless retried (never a cancel or a timeout),
    pruned ones only when ``rule`` (today's stop rule) would prune them again from what they measured."""
    status = doc.get("status")
    if status == "finished":
        return True
    if status == "failed":
        return not retry_failed and (doc.get("error") or {}).get("kind") not in ("cancelled", "timeout")
    if status == "pruned":
        measured = doc.get("measured") or {}
        g = gain(dotted(measured, rule["metric"]), dotted(doc.get("baseline"), rule["metric"]), rule["direction"])
        if g is not None and g < rule["gain_threshold"]:
            return True
        mem = dotted(measured, rule["memory_metric"])
        return rule["memory_cap"] is not None and mem is not None and mem > rule["memory_cap"]
    return False
