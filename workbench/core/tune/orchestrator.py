"""The tune's orchestrator, in the caller's process (the CLI, or a thread of the TUI): ``TuneConfig``, the handle
on one tune-worker job, and ``Tuner``, which runs the search (docs/tune.md). Torch-free."""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from workbench.core import atomic
from workbench.core.errors import InputError, JobFailed, OptbenchError
from workbench.core.evaluate import HIGHER_IS_BETTER
from workbench.core.recipe import Recipe
from workbench.core.tune import decide
from workbench.core.tune.budget import (ACCURACY_PARAM, TASK_METRICS, AccuracyBudget, memory_metric, objective_info,
                                        parse_accuracy_budget)
from workbench.core.tune.events import Emit, jsonable
from workbench.core.tune.space import PHASES, Candidate, build_space, canon, model_skips
from workbench.core.tune.trials import baseline_key, cache_load, cache_save, trial_key

SCHEMA = 1
STATUSES = ("finished", "pruned", "failed", "cancelled")


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
        self.fallbacks_dropped = 0
        self.model_skipped = 0
        self.model_info: dict | None = None
        self._model_checked = False
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
            w.error = {k: event.get(k) for k in ("kind", "message", "hint", "param")}
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
        if err.get("kind") == "input":
            return InputError(err.get("message") or msg, err.get("hint") or "", param=err.get("param"))
        return JobFailed(msg, err.get("hint") or "")

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
                raise InputError("none: no accuracy is measured, so the accuracy budget cannot be checked; expected "
                                 "an eval source (builtin, a file, hf:NAME)", param="eval")
            return
        if acc.default is None and acc.per_metric and not (set(acc.per_metric) & metrics):
            raise InputError(f"{acc.text}: none of its metrics is measured for {self.ctx.get('task')} models; "
                             f"expected one of: {', '.join(sorted(metrics))}", param=ACCURACY_PARAM)

    # -- trial bookkeeping (the decisions themselves are decide.py's pure functions)
    def _record(self, cand: Candidate, raw: dict, cached: bool, ran: bool) -> dict:
        summary = decide.summarize(cand, raw, trial_id=len(self.trials) + 1, cached=cached, ran=ran,
                                   objective=self.objective, baseline=self.baseline, device=self.ctx["device"],
                                   cfg=self.cfg)
        self.trials.append(summary)
        self.by_ident[cand.ident] = summary
        self.emit("trial", **summary)
        self.emit("frontier", **self._frontier_payload())
        self._progress(f"trial {summary['id']} {summary['status']}")
        return summary

    def _stop_rule(self) -> dict:
        return decide.stop_rule(self.objective, decide.best_feasible(self.trials), self.cfg, self.ctx["device"])

    def _frontier_payload(self) -> dict:
        return decide.frontier_payload(self.trials, self.baseline, self.objective, self.cfg.min_gain)

    def _next(self, pending: list[Candidate]) -> Candidate | None:
        """The next candidate to decide: the cheapest; within a cost class, the best predicted combination."""
        if not pending:
            return None
        return min(pending, key=lambda c: (c.cost, c.phase,
                                           -decide.predicted_gain(c, self.by_ident) if c.phase >= 2 else 0.0,
                                           c.index))

    def _gate(self, cand: Candidate) -> str | None:
        """A reason not to run a combination, from its parts' results; None to run it."""
        return decide.gate(cand, self.by_ident, self.singles, decide.best_feasible(self.trials),
                           self.objective["name"], self.cfg)

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
                                "give a larger time budget")
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
        last: Candidate | None = None
        while pending:
            if self._cancel.is_set():
                self.stopped = "cancelled"
                break
            if last is not None:
                self._drop_fallbacks(last, pending)
            if self.model_info and not self._model_checked:
                self._skip_for_model(pending)
            cand = last = self._next(pending)
            pending.remove(cand)
            reason = self._gate(cand)
            if reason:
                self._record(cand, {"status": "pruned", "reason": reason}, cached=False, ran=False)
                continue
            selftest = cfg.selftest.get(cand.label)
            key = trial_key(self.ctx, cfg.recipe, cand.steps, selftest)
            doc = cache_load(key)
            if doc is not None and decide.cached_usable(doc, self._stop_rule(), cfg.retry_failed):
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

    def _skip_for_model(self, pending: list[Candidate]) -> None:
        """Once the model is loaded (or its baseline came from the cache), the candidates that do nothing or cannot
        run on it (a bf16 cast of a bf16 model, autocast of half weights) leave the queue as skipped, with their
        reason, before any of them costs a trial."""
        self._model_checked = True
        skips = model_skips(pending, self.model_info)
        for cand, reason in skips:
            pending.remove(cand)
            self.space.skipped.append({"label": cand.label, "recipe": cand.steps, "reason": reason})
        self.model_skipped = len(skips)
        self.space.counts["skipped"] = len(self.space.skipped)
        if skips:
            self._log(f"{len(skips)} candidate(s) skipped on this {self.model_info.get('dtype')} model: "
                      f"{'; '.join(sorted({r for _, r in skips}))}")

    def _drop_fallbacks(self, cand: Candidate, pending: list[Candidate]) -> None:
        """Once the anchor's own trial stands, its eager fallbacks are dropped from the queue (one log line, a
        count in the report), not recorded one by one as pruned trials."""
        anchor = self.space.counts.get("anchor")
        if not anchor or cand.ident != canon(anchor["recipe"]) or cand.ident not in self.by_ident:
            return
        if decide.anchor_verdict(self.by_ident[cand.ident], self.cfg) is not None:
            self._log(f"{cand.label} did not stand ({self.by_ident[cand.ident].get('reason') or 'no gain'}): "
                      f"its eager fallbacks run instead", "warning")
            return
        dropped = [c for c in pending if c.fallback == cand.ident]
        for c in dropped:
            pending.remove(c)
        self.fallbacks_dropped += len(dropped)
        if dropped:
            self._log(f"{cand.label} stands (x{self.by_ident[cand.ident]['gain']:.2f}): weight changes are timed "
                      f"under it; {len(dropped)} eager fallbacks dropped")

    def _run_one(self, cand: Candidate, key: str, selftest: str | None) -> dict:
        w = self.worker
        self.run_count += 1
        tid = len(self.trials) + 1
        self.emit("trial-start", id=tid, label=cand.label, recipe=cand.steps, cost=cand.cost,
                  phase=PHASES[cand.phase], worker_pid=w.pid)
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
                   "hint": "raise the trial timeout"}
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
                       "fallbacks_dropped": self.fallbacks_dropped, "model_skipped": self.model_skipped,
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
