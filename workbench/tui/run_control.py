"""The App's run, inspect and export jobs: start them, show what they say, cancel them.

A mixin of ``OptbenchApp`` (Textual dispatches actions and messages to the App itself). Every job is a
``JobHandle`` whose events a thread worker posts as ``JobEvents`` / ``JobEnded`` messages (``tui/jobs.py``);
the handlers here turn them into pane updates. Results autosave through ``SessionKeeper``.
"""

from __future__ import annotations

from pathlib import Path

from rich.table import Table
from rich.text import Text

from workbench.core.errors import InputError
from workbench.core.jobs.protocol import PACE_KEYS
from workbench.tui import fmt
from workbench.tui.jobs import JobEnded, JobEvents, JobHandle
from workbench.tui.panes.accuracy import AccuracyPane
from workbench.tui.panes.latency import LatencyPane
from workbench.tui.panes.model import ModelPane, ModelSuggester
from workbench.tui.panes.monitor import MonitorPane
from workbench.tui.panes.progress_log import LogPane, ProgressPane, planned_stages
from workbench.tui.panes.summary import SummaryPane
from workbench.tui.panes.throughput import ThroughputPane

HANDLE_ATTR = {"run": "run_handle", "inspect": "inspect_handle", "verify": "export_handle"}
RESULT_PANES = (LatencyPane, ThroughputPane, AccuracyPane, SummaryPane)


class RunControl:
    run_handle: JobHandle | None = None
    inspect_handle: JobHandle | None = None
    export_handle: JobHandle | None = None
    last_export: dict | None = None

    # ------------------------------------------------------------------ jobs
    def track(self, handle: JobHandle) -> JobHandle:
        """Make ``handle`` (started) the app's job of its kind and watch its events."""
        setattr(self, HANDLE_ATTR[handle.kind], handle)
        self.run_worker(lambda: handle.watch(self.post_message), thread=True, group="jobs", exit_on_error=False)
        self.jobs_changed()
        return handle

    def jobs_changed(self) -> None:
        """Show or hide Cancel in the footer when what runs changes."""
        if self.cancellable != self._shown_cancellable:
            self._shown_cancellable = self.cancellable
            self.refresh_bindings()

    def cancel_in_background(self, handle) -> None:
        handle.cancelling = True
        self.run_worker(handle.cancel, thread=True, group="cancel")

    # Handlers by name (``on_<message>``): Textual collects ``@on`` decorators only from MessagePump subclasses, and
    # this mixin is not one.
    def on_job_events(self, message: JobEvents) -> None:
        h = message.handle
        handler = {"run": self._on_run_event, "inspect": self._on_inspect_event, "verify": self._on_verify_event}[h.kind]
        with self.batch_update():
            for event in message.events:
                try:
                    handler(h, event)
                except Exception as exc:  # a malformed event must not take the UI down
                    self.pane(LogPane).write(f"could not show a {event.get('type')} event: {exc!r}", "error")

    def on_job_ended(self, message: JobEnded) -> None:
        h = message.handle
        h.ended = True
        attr = HANDLE_ATTR[h.kind]
        if attr != "run_handle" and getattr(self, attr) is h:
            setattr(self, attr, None)
        if h is self.run_handle and self._export_when_done:
            self._export_when_done = False
            if h.final is not None and h.error is None:
                self.action_export()
        self.jobs_changed()

    # ------------------------------------------------------------------ inspect
    def start_inspect(self) -> None:
        if not self.wb.model_ref:
            return
        self.cancel_inspect()
        spec = {"job": "inspect", "model": {"ref": self.wb.model_ref, "task": None}, "device": "cpu"}
        self.track(JobHandle("inspect", spec, extra={"ref": self.wb.model_ref}).start())

    def cancel_inspect(self) -> None:
        h = self.inspect_handle
        if h is not None and h.active:
            self.cancel_in_background(h)
        self.inspect_handle = None

    def action_inspect(self) -> None:
        from workbench.tui.detect import detect

        if not self.wb.model_ref:
            self.tell("no model yet: type one first (l)", "warning")
            return
        if self.run_handle is not None and self.run_handle.active:
            self.tell("a run is loading the model already", "warning")
            return
        self.pane(ModelPane).show_detected(detect(self.wb.model_ref), inspecting=True)
        self.start_inspect()

    def _on_inspect_event(self, h: JobHandle, e: dict) -> None:
        if h is not self.inspect_handle or h.extra.get("ref") != self.wb.model_ref:
            return  # a stale inspect for a model no longer shown
        if e["type"] == "model":
            self.pane(ModelPane).show_model(e)
            if e.get("task"):
                self.wb.task = e["task"]
                self.recheck()
        elif e["type"] == "error" and not h.cancelling:
            self.pane(ModelPane).show_inspect_failed(e.get("message", ""))
            self.tell(_with_hint(e, "inspect failed"), "error", title="Model")

    # ------------------------------------------------------------------ run
    def action_run(self) -> None:
        if self.run_handle is not None and self.run_handle.active:
            self.tell("a run is already in progress (x cancels it)", "warning")
            return
        if self.tuning:
            self.tell("a tune is running: a run now would disturb its timings (cancel it on the tune screen, t)",
                      "warning")
            self._export_after_run = False
            return
        recipe, problem = self.wb.check()
        if problem:
            self.tell(problem, "error", title="Cannot run")
            self.action_show_tab("setup")
            return
        warning = self.wb.hardware_warning()
        if warning:
            self.tell(warning, "warning", title="This CPU")
        try:
            session, created = self.sessions.for_run(recipe)
        except InputError as exc:
            self.tell(exc.message, "error", title="Session")
            return
        if created:
            self.tell(f"results autosave to session {session.name} (s renames it)")
        self.cancel_inspect()
        artifact = str(session.artifact_dir) if self.wb.save_artifact else None
        spec = {"job": "run", "recipe": recipe.to_dict(), "artifact_dir": artifact}
        with self.batch_update():
            for cls in (LatencyPane, ThroughputPane, AccuracyPane):
                self.pane(cls).clear()
            self.pane(MonitorPane).reset()
            self.pane(MonitorPane).set_status("waiting for the job's first reading…")
            self.pane(SummaryPane).set_running()
            self.pane(ProgressPane).start(planned_stages(recipe, artifact is not None))
            steps = " → ".join(s.name for s in recipe.optimizations) or "baseline only"
            self.pane(LogPane).write(f"run: {recipe.model.ref} · {steps} · session {session.name}", "info")
            self.action_show_tab("run")
        self.track(JobHandle("run", spec, session=session, recipe=recipe).start())
        self.sub_title = f"{recipe.model.ref} · running"

    def action_cancel(self) -> None:
        h = self.run_handle
        if h is None or not h.active:
            if self.export_handle is not None and self.export_handle.active:
                self.cancel_in_background(self.export_handle)
                self.tell("cancelling the export…", "warning")
                return
            if self.tuning:
                self.action_tune_cancel()
                return
            self.tell("nothing is running", "information")
            return
        if not h.cancelling:
            self.pane(LogPane).write("cancel requested", "warning")
            self.cancel_in_background(h)

    def _on_run_event(self, h: JobHandle, e: dict) -> None:
        kind = e["type"]
        if kind == "sample":
            mon = self.pane(MonitorPane)
            if mon.count == 0:
                mon.set_status("live readings of the job process", "green")
            mon.add_sample(e)
        elif kind == "progress":
            self.pane(ProgressPane).update(e.get("stage", "?"), e.get("fraction", 0.0),
                                           {k: e[k] for k in PACE_KEYS if e.get(k) is not None})
        elif kind == "log":
            self.pane(LogPane).write(e.get("text", ""), e.get("level", "info"))
        elif kind == "model":
            self.pane(ModelPane).show_model(e, source="loaded for this run")
            if e.get("task"):
                self.wb.task = e["task"]
        elif kind == "result" and e.get("phase") == "baseline":
            phase = e.get("report") or {}
            for cls in (LatencyPane, ThroughputPane, AccuracyPane):
                self.pane(cls).set_baseline(phase)
            self.pane(SummaryPane).set_running(phase)
        elif kind == "result" and e.get("phase") == "final":
            self._on_final(h, e.get("report") or {})
        elif kind == "error":
            h.error = e
            self._export_after_run = False
            cancelled = e.get("kind") == "cancelled" or h.cancelling
            self.pane(ProgressPane).finish("cancelled" if cancelled else "failed")
            self.pane(LogPane).write(f"{e.get('kind')}: {e.get('message')}" +
                                     (f" — {e['hint']}" if e.get("hint") else ""), "warning" if cancelled else "error")
            if cancelled:
                self.tell("the run was cancelled; nothing from it was saved", "warning", title="Cancelled")
            else:
                self.tell(_with_hint(e, "the job failed"), "error", title=f"Run failed ({e.get('kind')})")
            self.pane(SummaryPane).clear()
        elif kind == "done":
            h.ok = bool(e.get("ok"))
            self.pane(MonitorPane).set_status("job finished; the last readings stay below")
            self.sub_title = self.wb.model_ref or ""

    def _on_final(self, h: JobHandle, report: dict) -> None:
        h.final = report
        session = h.session
        try:
            run_id = self.sessions.record_run(session, report)  # autosave: atomic, on arrival
            saved = True
        except InputError as exc:
            run_id, saved = len(session.results.get("runs", [])) + 1, False
            self.tell(exc.message, "error", title="Autosave failed")
        self.pane(ProgressPane).finish("done")
        self.show_report(report, run_id)
        over = [n for n, s in self.pane(AccuracyPane).statuses().items() if s == "over"]
        msg = f"run {run_id}: {fmt.ratio(report.get('speedup'))} speedup, size {fmt.ratio(report.get('size_ratio'))}"
        if over:
            msg += f"; over the accuracy budget: {', '.join(over)}"
        if saved:
            msg += f"; saved in session {session.name}"
        self.tell(msg, "warning" if over else "information", title="Run finished")
        self.action_show_tab("results")
        if self._export_after_run:
            self._export_after_run = False
            self._export_when_done = saved  # the job still runs until its ``done``: export then (JobEnded)

    def show_report(self, report: dict, run_id) -> None:
        for cls in (LatencyPane, ThroughputPane, AccuracyPane):
            self.pane(cls).set_report(report)
        self.pane(SummaryPane).set_report(report, run_id)

    # ------------------------------------------------------------------ export
    def action_export(self) -> None:
        s = self.session
        if s is None:
            self.tell("no session yet: run first; export copies the optimized model a run kept", "warning")
            return
        if self.run_handle is not None and self.run_handle.active and self.run_handle.session is s:
            self.tell("a run is rewriting this session's model: export when it ends", "warning")
            return
        if not s.artifact_dir.is_dir():
            self.tell(f"session {s.name} has no saved model: keep 'keep the optimized model' on and run again",
                      "warning")
            return
        if self.export_handle is not None and self.export_handle.active:
            self.tell("an export is already running", "warning")
            return

        def check(path: str) -> str | None:
            out = Path(path).expanduser()
            if out.exists() and (not out.is_dir() or any(out.iterdir())):
                return f"{path}: exists and is not an empty folder; expected a new folder"
            return None

        from workbench.tui.screens.dialogs import PromptDialog

        default = str(Path.cwd() / "exports" / s.name)
        self.push_screen(PromptDialog(f"Export session {s.name}'s model to folder:", default, check,
                                      suggester=ModelSuggester()), self.export_to)

    def export_to(self, path: str | None) -> None:
        if not path or self.session is None:
            return
        out = Path(path).expanduser().resolve()
        spec = {"job": "verify", "src": str(self.session.artifact_dir), "out": str(out)}
        self.track(JobHandle("verify", spec, session=self.session).start())
        self.tell(f"exporting to {out} and verifying it reloads…")

    def _on_verify_event(self, h: JobHandle, e: dict) -> None:
        if e["type"] == "result" and e.get("phase") == "export":
            from workbench.tui.screens.dialogs import InfoDialog

            r = e.get("report") or {}
            self.last_export = r
            ok = bool(r.get("verified"))
            body = Table.grid(padding=(0, 2))
            body.add_column(style="bold")
            body.add_column()
            body.add_row("verified", Text("yes: reloaded and matches" if ok else "NO", style="green" if ok else "red"))
            body.add_row("max relative error", f"{fmt.num(r.get('max_rel_error'), 3)} "
                                               f"(tolerance {fmt.num(r.get('tolerance'), 3)})")
            body.add_row("folder", str(r.get("path")))
            body.add_row("size on disk", fmt.size_bytes(r.get("bytes_on_disk")))
            self.push_screen(InfoDialog("Export " + ("verified" if ok else "NOT verified"), body))
            self.tell(f"exported to {r.get('path')}" + (" (verified)" if ok else " but verification failed"),
                      "information" if ok else "error", title="Export")
        elif e["type"] == "error":
            h.error = e
            self.tell(_with_hint(e, "export failed"), "error", title="Export failed")

    # ------------------------------------------------------------------ leaving
    def stop_jobs(self) -> None:
        """Cancel every job (blocking, at most ~2 s each); used when the app goes away."""
        if self.tune_handle is not None and self.tune_handle.active:
            self.tune_handle.cancel()
        for h in (self.run_handle, self.inspect_handle, self.export_handle):
            if h is not None and h.active:
                h.cancel()


def _with_hint(e: dict, default: str) -> str:
    return e.get("message", default) + (f"\n{e['hint']}" if e.get("hint") else "")
