"""The tune as the workbench runs it: the form's checks, the tune's events turned into plain data, and the handle
on a running tune. No widgets here (the tune screen and its panes render ``TuneState``); no torch either.

Where the tune runs: a thread of the UI process, not a subprocess
    ``workbench.core.tune.Tuner`` is the torch-free orchestrator: it spends a tune blocked on a queue of events
    from its own ``tune-worker`` job process, which does every load, apply, benchmark and evaluation. Run in a
    daemon thread here, it costs the UI a few milliseconds per trial (it was measured at 0.2 s of bookkeeping per
    trial *including* the worker's round trips), its events reach the UI as Python dicts through a
    ``queue.Queue`` (the app drains it on its 0.1 s poll, like job events, so no widget is touched from the
    thread), ``Tuner.cancel()`` is a direct call, and there is no second orchestrator process that could be
    orphaned: the only process a tune adds is the worker, a process-group leader like every job. A subprocess
    would add a Python start per tune, a second event protocol and one more process to reap on SIGHUP, and would
    buy only isolation from a crash of the orchestrator itself, which here is an exception in the thread, caught
    and shown as a failed tune.

Cancel and shutdown
    ``TuneHandle.cancel()`` sets the tuner's cancel flag (its pump notices within 0.2 s and kills the worker's
    process group: SIGTERM, SIGKILL after 1.5 s) and waits for the thread; past ~1.8 s it kills the worker
    itself. The app calls it from a thread worker (it blocks), from ``stop_jobs`` on quit and unmount, and
    ``kill_now()`` (no waiting, no locks) from its SIGHUP/SIGTERM handler. A worker whose orchestrator vanished
    (the UI killed with SIGKILL) exits on its own when it next waits for a trial (core/tune/worker.py).
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from textual.message import Message

from workbench.core.errors import InputError, OptbenchError

END = "_end"  # the handle's own last event: {status, report, error}
OBJECTIVE_LABELS = {"latency": "latency (p50)", "throughput": "throughput", "memory": "peak memory",
                    "size": "model size"}


# ------------------------------------------------------------------ the form

@dataclass
class TuneForm:
    """The tune form's raw text, as typed. Field names are ``workbench.core.tune.form``'s (``optbench tune``'s
    flags with underscores)."""

    objective: str = "latency"
    max_accuracy_drop: str = "1%"
    memory_mb: str = ""
    budget: str = "20m"
    opts: str = ""
    max_trials: str = ""
    min_gain: str = "5"
    max_contention: str = "25"

    TEXT_FIELDS = ("max_accuracy_drop", "memory_mb", "budget", "opts", "max_trials", "min_gain", "max_contention")

    def values(self) -> dict:
        """The fields as ``tune_config`` takes them: a blank optional field is not given (None)."""
        out = {"objective": self.objective}
        for name in self.TEXT_FIELDS:
            raw = str(getattr(self, name)).strip()
            out[name] = raw if raw or name in ("max_accuracy_drop", "budget", "min_gain", "max_contention") \
                else None
        return out


def field_message(exc: InputError) -> str:
    """An error as the form shows it: the core names the value, the form the field (``budget 10q: not a ...``)."""
    param = getattr(exc, "param", None)
    return f"{param.replace('_', ' ')} {exc.message}" if param else exc.message


def check_field(name: str, raw: str, task: str | None = None, device: str = "cpu") -> str | None:
    """The problem with one field's value, or None when it is fine: the core's check (workbench/core/tune/form.py),
    so the CLI and the form say the same. Torch-free, cheap (runs per keystroke)."""
    from workbench.core.tune import form

    value = TuneForm(**{name: raw}).values()[name] if name in TuneForm.TEXT_FIELDS else raw
    if value is None:
        return None  # an optional field left blank
    try:
        form.parse_field(name, value)
    except InputError as exc:
        return field_message(exc)
    return None


def space_preview(form: TuneForm, task: str | None, device: str) -> dict | None:
    """The search space the form would build (counts and skips), or None when the opts field is invalid."""
    from workbench.core import tune

    if check_field("opts", form.opts, task, device):
        return None
    opts = tune.parse_opts(form.opts) or None
    sp = tune.build_space(task or "causal-lm", device, opts)
    return {**{k: v for k, v in sp.counts.items() if k != "capped_labels"},
            "skipped_labels": [s["label"] for s in sp.skipped if "+" not in s["label"]], "task": task}


def build_config(form: TuneForm, base_recipe):
    """A ``TuneConfig`` from the form on top of the workbench's model, bench and eval settings and device, through
    the core's ``tune_config`` (the checks and messages ``optbench tune`` has). Raises InputError."""
    from workbench.core.recipe import Recipe
    from workbench.core.tune import tune_config

    base = Recipe(base_recipe.model, [], base_recipe.bench, base_recipe.eval, base_recipe.device)
    try:
        return tune_config(base, **form.values())
    except InputError as exc:
        raise InputError(field_message(exc), exc.hint, param=exc.param) from None


# ------------------------------------------------------------------ events -> plain data

def short_metric(metric: str) -> str:
    return {"cosine_to_baseline": "cos", "recall_at_1": "R@1", "perplexity": "ppl", "kl_divergence": "KL",
            "next_token_agreement": "agree", "agreement": "agree", "accuracy": "acc",
            "cosine_min": "cos min"}.get(metric, metric)


def worst_metric(trial: dict) -> tuple[str, dict] | None:
    """The metric that used most of its allowed drop (or, when none is constrained, the largest relative drop)."""
    rows = [(m, r) for m, r in (trial.get("accuracy") or {}).items() if isinstance(r, dict)]
    if not rows:
        return None

    def used(item):
        r = item[1]
        if r.get("allowed"):
            return (1, (r.get("drop") or 0.0) / r["allowed"])
        return (0, r.get("drop_relative") or 0.0)

    return max(rows, key=used)


def trial_kind(trial: dict) -> str:
    """How the scatter and the table show a trial: feasible, over (budget), pruned, not-run, failed, cancelled."""
    status = trial.get("status")
    if status == "finished":
        return "feasible" if trial.get("feasible") else "over"
    if status == "pruned":
        return "pruned" if trial.get("ran") or trial.get("cached") else "not-run"
    return status or "failed"


@dataclass
class TuneState:
    """Everything the tune screen shows, built only from the tune's events (or a saved tune report)."""

    status: str = "idle"  # idle, starting, running, done, cancelled, failed
    model: str | None = None
    task: str | None = None
    device: str | None = None
    objective: dict | None = None  # {name, metric, unit, direction}
    constraints: dict = field(default_factory=dict)
    budget_s: float | None = None
    space: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)
    trials: list[dict] = field(default_factory=list)
    current: dict | None = None  # the trial-start of the trial running now
    frontier: list[dict] = field(default_factory=list)
    best: dict | None = None
    baseline_objective: float | None = None
    progress: dict = field(default_factory=dict)
    progress_at: float | None = None  # monotonic time of the last progress event (the clock runs on between them)
    log: deque = field(default_factory=lambda: deque(maxlen=400))
    sample: dict | None = None
    report: dict | None = None
    error: str | None = None
    saved_in: str | None = None  # the session the result went into
    started_at: float | None = None

    def reset(self, model: str | None = None) -> None:
        self.__init__()  # type: ignore[misc]
        self.model = model
        self.status = "starting"
        self.started_at = time.monotonic()

    @property
    def active(self) -> bool:
        return self.status in ("starting", "running")

    def apply(self, kind: str, ev: dict) -> set[str]:
        """Take one event; returns what changed: some of {"start", "trials", "frontier", "progress", "log",
        "sample", "end"}."""
        if kind == "tune-start":
            self.status = "running"
            self.model, self.task, self.device = ev.get("model"), ev.get("task"), ev.get("device")
            self.objective = ev.get("objective")
            self.constraints = ev.get("constraints") or {}
            self.budget_s = ev.get("budget_s")
            self.space = ev.get("space") or {}
            self.skipped = ev.get("skipped") or []
            return {"start", "progress", "trials", "frontier"}
        if kind == "trial-start":
            self.current = ev
            return {"progress"}
        if kind == "trial":
            self.trials.append(ev)
            if self.current is not None and self.current.get("id") == ev.get("id"):
                self.current = None
            return {"trials", "progress"}
        if kind == "frontier":
            self.frontier = ev.get("frontier") or []
            self.best = ev.get("best")
            self.baseline_objective = ev.get("baseline_objective")
            if ev.get("objective"):
                self.objective = ev["objective"]
            return {"frontier", "trials", "progress"}
        if kind == "progress":
            self.progress = ev
            self.progress_at = time.monotonic()
            if self.budget_s is None and ev.get("budget_s"):
                self.budget_s = ev["budget_s"]
            return {"progress"}
        if kind == "log":
            self.log.append((ev.get("level", "info"), str(ev.get("text", ""))))
            return {"log"}
        if kind == "sample":
            self.sample = ev
            return {"sample"}
        if kind == "result" and ev.get("phase") == "tune":
            self.load_report(ev.get("report") or {}, status=None)
            return {"start", "trials", "frontier", "progress"}
        if kind == END:
            self.current = None
            self.status = ev.get("status", "done")
            self.error = ev.get("error")
            if ev.get("report") and self.report is None:
                self.load_report(ev["report"], status=None)
            return {"end", "progress", "trials", "frontier"}
        return set()

    def load_report(self, report: dict, status: str | None = "done") -> None:
        """Show a finished tune from its report (the ``result`` event, or a session's saved tune)."""
        self.report = report
        model = report.get("model") or {}
        self.model = model.get("ref") or self.model
        self.task, self.device = report.get("task") or self.task, report.get("device") or self.device
        self.objective = report.get("objective") or self.objective
        self.constraints = report.get("constraints") or self.constraints
        self.budget_s = (report.get("constraints") or {}).get("budget_s") or self.budget_s
        self.space = report.get("space") or self.space
        self.skipped = report.get("skipped") or self.skipped
        self.trials = list(report.get("trials") or [])
        self.frontier = list(report.get("frontier") or [])
        self.best = report.get("chosen")
        self.baseline_objective = (report.get("baseline") or {}).get("objective")
        counts = report.get("counts") or {}
        self.progress = {**self.progress, "trials_run": counts.get("run", self.progress.get("trials_run")),
                         "trials_decided": counts.get("decided", len(self.trials)),
                         "elapsed_s": report.get("seconds", self.progress.get("elapsed_s")),
                         "budget_s": self.budget_s, "fraction": 1.0, "stage": f"stopped: {report.get('stopped')}"}
        self.progress_at = None
        if status is not None:
            self.status = status

    # ---- derived values the panes show
    def elapsed(self, now: float | None = None) -> float | None:
        e = self.progress.get("elapsed_s")
        if self.active and self.progress_at is not None and e is not None:
            return e + ((now if now is not None else time.monotonic()) - self.progress_at)
        if e is None and self.active and self.started_at is not None:
            return (now if now is not None else time.monotonic()) - self.started_at
        return e

    def frontier_ids(self) -> set:
        return {f.get("id") for f in self.frontier}

    def accuracy_text(self) -> str:
        return ((self.constraints.get("max_accuracy_drop") or {}).get("text")) or "?"

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            k = trial_kind(t)
            out[k] = out.get(k, 0) + 1
        out["cached"] = sum(1 for t in self.trials if t.get("cached"))
        return out


# ------------------------------------------------------------------ the running tune

class TuneHandle:
    """One tune in a daemon thread of the UI process (see the module docstring). Thread-safe surface: ``poll``
    (UI thread), ``cancel`` (a thread worker), ``kill_now`` (a signal handler)."""

    def __init__(self, config, recipe) -> None:
        from workbench.core.tune import Tuner

        self.config = config
        self.recipe = recipe  # the base recipe (model, bench, eval, device) the tune ran on
        self.events: queue.Queue = queue.Queue()
        self.tuner = Tuner(config, self._emit)
        self.thread = threading.Thread(target=self._run, name="optbench-tune", daemon=True)
        self.cancelling = False
        self.finished = False  # the END event was polled
        self.report: dict | None = None
        self.error: str | None = None
        self.status: str | None = None  # done, cancelled, failed (set with END)

    def start(self) -> "TuneHandle":
        self.thread.start()
        return self

    @property
    def active(self) -> bool:
        return not self.finished

    @property
    def worker_pid(self) -> int | None:
        w = self.tuner.worker
        try:
            return w.pid if w is not None and not w.dead else None
        except Exception:  # noqa: BLE001 - a worker whose job never started
            return None

    def _emit(self, type_: str, **payload: Any) -> None:
        self.events.put((type_, payload))

    def _run(self) -> None:
        end: dict[str, Any]
        try:
            report = self.tuner.run()
            stopped = report.get("stopped")
            end = {"status": "cancelled" if self.cancelling or stopped == "cancelled" else "done",
                   "report": report}
        except KeyboardInterrupt:
            end = {"status": "cancelled", "report": None}
        except OptbenchError as exc:
            msg = exc.message + (f" — {exc.hint}" if getattr(exc, "hint", "") else "")
            end = {"status": "cancelled" if self.cancelling else "failed", "report": None, "error": msg}
        except BaseException as exc:  # noqa: BLE001 - a bug in the orchestrator is a failed tune, not a dead UI
            end = {"status": "failed", "report": None,
                   "error": f"{exc!r}\n{''.join(traceback.format_exception(exc))[-1500:]}"}
        self.report = end.get("report")
        self.error = end.get("error")
        self.events.put((END, end))

    def poll(self, limit: int = 2000) -> list[tuple[str, dict]]:
        """Non-blocking: the events since the last call (``watch`` is the app's way); END marks the handle finished."""
        out = []
        while len(out) < limit:
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                break
            out.append(item)
            if item[0] == END:
                self.ended(item[1])
                break
        return out

    def watch(self, post) -> None:
        """Blocking, for a thread worker of the app: post each batch of events as a ``TuneEvents`` message, up to and
        including END (the app marks the handle finished when it handles that batch: ``ended``)."""
        while True:
            batch = [self.events.get()]
            while batch[-1][0] != END:
                try:
                    batch.append(self.events.get_nowait())
                except queue.Empty:
                    break
            post(TuneEvents(self, batch))
            if batch[-1][0] == END:
                return

    def ended(self, end: dict) -> None:
        self.status = end.get("status")
        self.finished = True

    def cancel(self, wait: float = 1.8) -> None:
        """Blocking (about ``wait`` seconds at most, plus a kill): call it from a thread worker."""
        self.cancelling = True
        self.tuner.cancel()
        self.thread.join(timeout=wait)
        if self.thread.is_alive():
            self._kill_worker(signal.SIGKILL)
            self.thread.join(timeout=1.0)

    def kill_now(self, sig: int = signal.SIGTERM) -> None:
        """From a signal handler: no waiting. The worker's process group goes; the thread then ends on its own."""
        self.cancelling = True
        self.tuner.cancel()
        self._kill_worker(sig)

    def _kill_worker(self, sig: int) -> None:
        pid = self.worker_pid
        if pid is None:
            return
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


class TuneEvents(Message):
    """Events of a running tune, in order: (kind, payload) pairs, the last one END when the tune is over."""

    def __init__(self, handle: TuneHandle, events: list[tuple[str, dict]]) -> None:
        super().__init__()
        self.handle = handle
        self.events = events
