"""The optbench workbench: a Textual app over the core engine.

The app is the controller: it holds the setup (``Workbench``), the open session and the running jobs, turns job
events into pane updates, and autosaves each result. It never imports torch or transformers; the job process does
the heavy work and a crash there cannot take the app down.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

from rich.table import Table
from rich.text import Text
from textual.app import App
from textual.binding import Binding
from textual.widgets import TabbedContent

from workbench.core import atomic, userconfig
from workbench.core.errors import InputError, OptbenchError
from workbench.core.recipe import Recipe
from workbench.core.session import Session, SessionStore, check_name
from workbench.tui import fmt, keys
from workbench.tui.commands import WorkbenchCommands
from workbench.tui.detect import detect
from workbench.tui.jobs import JobHandle
from workbench.tui.panes.accuracy import AccuracyPane
from workbench.tui.panes.latency import LatencyPane
from workbench.tui.panes.model import ModelPane, ModelSuggester
from workbench.tui.panes.monitor import MonitorPane
from workbench.tui.panes.optimizations import OptimizationsPane
from workbench.tui.panes.progress_log import LogPane, ProgressPane, planned_stages
from workbench.tui.panes.settings import SettingsPane
from workbench.tui.panes.summary import SummaryPane
from workbench.tui.panes.throughput import ThroughputPane
from workbench.tui.screens.compare import CompareScreen
from workbench.tui.screens.dialogs import ConfirmDialog, InfoDialog, PromptDialog
from workbench.tui.screens.help import HelpScreen
from workbench.tui.screens.main import APP_LEVEL, MainScreen
from workbench.tui.screens.sessions import SessionDeleted, SessionRenamed, SessionsScreen
from workbench.tui.screens.tune import TuneScreen
from workbench.tui.state import Workbench
from workbench.tui.tuning import TuneForm, TuneHandle, TuneState, build_config, check_field

POLL_S = 0.1  # job event polling; panes with plots redraw on their own, slower, schedule
EXIT_GRACE_S = 8.0  # after SIGHUP/SIGTERM: how long the UI may take to exit before it is ended without the terminal


class OptbenchApp(App):
    TITLE = "optbench"
    SUB_TITLE = "make Transformer models faster and smaller"
    CSS_PATH = "optbench.tcss"
    COMMANDS = App.COMMANDS | {WorkbenchCommands}
    BINDINGS = [Binding(k.key, k.action, k.description, show=k.show, id=k.id, priority=False)
                for k in keys.MAIN if k.id in APP_LEVEL]
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]

    def __init__(self, model: str | None = None, *, sessions_root: str | Path | None = None, bench=None,
                 eval=None, device: str | None = None, auto_inspect: bool = True) -> None:
        super().__init__()
        self.wb = Workbench()
        if bench is not None:
            self.wb.bench = bench
        if eval is not None:
            self.wb.eval = eval
        if device is not None:
            self.wb.device = device
        self.store = SessionStore(sessions_root)
        self.session: Session | None = None
        self.initial_model = model
        self.auto_inspect = auto_inspect
        self.recent = userconfig.load_recent()
        self.keymap_overrides, self.keymap_error = userconfig.load_keymap()
        self.run_handle: JobHandle | None = None
        self.inspect_handle: JobHandle | None = None
        self.export_handle: JobHandle | None = None
        self.last_report: dict | None = None
        self.last_export: dict | None = None
        self.tune_state = TuneState()  # what the tune screen shows: the running tune, or the last one
        self.tune_form = TuneForm()
        self.tune_handle: TuneHandle | None = None
        self._export_after_run = False  # "export best": the run that keeps the model, then the export prompt
        self._export_when_done = False
        self._shown_cancellable = False  # whether the footer shows Cancel now
        self.notices: list[tuple[str, str]] = []  # (severity, message): what the user was told (tests read it)
        self.ready = False  # the main screen's panes exist

    # ------------------------------------------------------------------ setup
    def get_default_screen(self) -> MainScreen:
        self.main_screen = MainScreen(self.wb, self.recent)
        return self.main_screen

    def main_ready(self) -> None:
        """Called by the main screen once its panes exist."""
        self.ready = True
        if self.keymap_overrides:
            self.set_keymap(self.keymap_overrides)
        if self.keymap_error:
            self.tell(self.keymap_error, "warning")
        self.set_interval(POLL_S, self._pump)
        self.recheck()
        if self.initial_model:
            self.load_model(self.initial_model)
            first = self.main_screen.query(".opt-toggle").first()
            self.main_screen.set_focus(first)  # the model is set: toggling optimizations comes next
        else:
            self.pane(ModelPane).query_one("#model-input").focus()

    def pane(self, cls):
        return self.main_screen.query_one(cls)

    def tell(self, message: str, severity: str = "information", title: str = "", timeout: float | None = None) -> None:
        """A notification, also kept in ``self.notices``."""
        self.notices.append((severity, message))
        self.notify(message, title=title, severity=severity, timeout=timeout or (10 if severity == "error" else 5))

    @property
    def busy(self) -> bool:
        return any(h is not None and h.active for h in (self.run_handle, self.inspect_handle, self.export_handle,
                                                         self.tune_handle))

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        """Cancel is offered (footer and key) only while something runs: an 80-column footer then has room for
        every other key, Help and Quit included."""
        if action == "cancel":
            return self.cancellable
        return True

    @property
    def cancellable(self) -> bool:
        """A run, an export or a tune is active (what Cancel stops)."""
        return self.tuning or any(h is not None and h.active for h in (self.run_handle, self.export_handle))

    @property
    def tuning(self) -> bool:
        return self.tune_handle is not None and self.tune_handle.active

    # ------------------------------------------------------------------ model
    def load_model(self, ref: str, inspect: bool | None = None) -> bool:
        """Detect ``ref`` without torch now; then (optionally) load it in an inspect job for the full picture."""
        ref = ref.strip()
        pane = self.pane(ModelPane)
        pane.set_ref(ref)
        try:
            info = detect(ref)
        except InputError as exc:
            pane.show_error(exc.message)
            self.tell(exc.message, "error", title="Model")
            return False
        if ref != self.wb.model_ref and self.session is not None:
            self.session = None  # a session holds one model: the next run starts a new one
        self.wb.model_ref = ref
        self.wb.task = info.get("task")
        self.recent, problem = userconfig.add_recent(ref)
        if problem:
            self.tell(problem, "warning")
        pane.set_recent(self.recent)
        self.sub_title = ref
        inspect = self.auto_inspect if inspect is None else inspect
        will_inspect = inspect and not (self.run_handle and self.run_handle.active)
        pane.show_detected(info, inspecting=will_inspect)
        if will_inspect:
            self.start_inspect()
        self.recheck()
        return True

    def start_inspect(self) -> None:
        if not self.wb.model_ref:
            return
        self._cancel_inspect()
        spec = {"job": "inspect", "model": {"ref": self.wb.model_ref, "task": None}, "device": "cpu"}
        self.inspect_handle = JobHandle("inspect", spec, extra={"ref": self.wb.model_ref}).start()

    def _cancel_inspect(self) -> None:
        h = self.inspect_handle
        if h is not None and h.active:
            h.cancelling = True
            self.run_worker(h.cancel, thread=True, group="cancel")
        self.inspect_handle = None

    def on_model_pane_load_requested(self, message: ModelPane.LoadRequested) -> None:
        self.load_model(message.ref)

    # ------------------------------------------------------------------ setup edits
    def on_optimizations_pane_changed(self, message: OptimizationsPane.Changed) -> None:
        if message.param is None:
            self.wb.set_enabled(message.name, bool(message.value))
        else:
            self.wb.set_param(message.name, message.param, message.value)
        self.recheck()

    def on_settings_pane_changed(self, message: SettingsPane.Changed) -> None:
        if message.section == "bench":
            setattr(self.wb.bench, message.name, message.value)
        elif message.section == "eval":
            setattr(self.wb.eval, message.name, message.value)
        elif message.name == "budget_pct":
            self.wb.budget_pct = message.value
            self.pane(AccuracyPane).set_budget(message.value)
        else:
            setattr(self.wb, message.name, message.value)
        self.recheck()

    def toggle_optimization(self, name: str) -> None:
        from textual.widgets import Checkbox

        from workbench.tui.panes.optimizations import safe_id

        box = self.pane(OptimizationsPane).query_one(f"#opt-{safe_id(name)}", Checkbox)
        box.value = not box.value  # the pane posts Changed, which updates the workbench

    def recheck(self) -> str | None:
        return self.pane(OptimizationsPane).show_check(self.wb)

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
            session = self._session_for(recipe)
        except InputError as exc:
            self.tell(exc.message, "error", title="Session")
            return
        self._cancel_inspect()
        artifact = str(session.artifact_dir) if self.wb.save_artifact else None
        spec = {"job": "run", "recipe": recipe.to_dict(), "artifact_dir": artifact}
        with self.batch_update():
            for cls in (LatencyPane, ThroughputPane, AccuracyPane):
                self.pane(cls).clear()
            self.pane(MonitorPane).reset()
            self.pane(MonitorPane).set_status("waiting for the job's first reading…")
            self.pane(SummaryPane).set_running()
            self.pane(ProgressPane).start(planned_stages(recipe, artifact is not None))
            log = self.pane(LogPane)
            steps = " → ".join(s.name for s in recipe.optimizations) or "baseline only"
            log.write(f"run: {recipe.model.ref} · {steps} · session {session.name}", "info")
            self.action_show_tab("run")
        self.run_handle = JobHandle("run", spec, session=session, recipe=recipe).start()
        self.sub_title = f"{recipe.model.ref} · running"

    def _session_for(self, recipe) -> Session:
        """The open session (recipe updated), or a new one named after the model and the time."""
        if self.session is not None and self.session.recipe.model.ref == recipe.model.ref \
                and self.store.exists(self.session.name):
            self.session.recipe = recipe
            self.session.save()
            return self.session
        self.session = self.store.create(self._auto_name(recipe.model.ref), recipe, {})
        self.tell(f"results autosave to session {self.session.name} (s renames it)")
        return self.session

    def _auto_name(self, ref: str) -> str:
        stem = re.sub(r"[^A-Za-z0-9._-]", "-", ref.rstrip("/").split("/")[-1].split(":")[-1]).strip("-.") or "model"
        base = f"{stem[:40]}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        name, i = base, 2
        while self.store.exists(name):
            name, i = f"{base}-{i}", i + 1
        return name

    def action_cancel(self) -> None:
        h = self.run_handle
        if h is None or not h.active:
            if self.export_handle is not None and self.export_handle.active:
                self.run_worker(self.export_handle.cancel, thread=True, group="cancel")
                self.tell("cancelling the export…", "warning")
                return
            if self.tuning:
                self.action_tune_cancel()
                return
            self.tell("nothing is running", "information")
            return
        if not h.cancelling:
            h.cancelling = True
            self.pane(LogPane).write("cancel requested", "warning")
            self.run_worker(h.cancel, thread=True, group="cancel")

    # ------------------------------------------------------------------ job events
    def _pump(self) -> None:
        for attr in ("run_handle", "inspect_handle", "export_handle"):
            h = getattr(self, attr)
            if h is None or h.job is None:
                continue
            events = h.poll()
            if events:
                with self.batch_update():
                    for event in events:
                        try:
                            getattr(self, f"_on_{h.kind}_event")(h, event)
                        except Exception as exc:  # a malformed event must not take the UI down
                            self.pane(LogPane).write(f"could not show a {event.get('type')} event: {exc!r}",
                                                     "error")
            if h.finished and getattr(self, attr) is h and attr != "run_handle":
                setattr(self, attr, None)
            if attr == "run_handle" and h.finished and self._export_when_done:
                self._export_when_done = False
                if h.final is not None and h.error is None:
                    self.action_export()
        self._pump_tune()
        if self.cancellable != self._shown_cancellable:  # show or hide Cancel in the footer
            self._shown_cancellable = self.cancellable
            self.refresh_bindings()

    def _on_run_event(self, h: JobHandle, e: dict) -> None:
        kind = e["type"]
        if kind == "sample":
            mon = self.pane(MonitorPane)
            if mon.count == 0:
                mon.set_status("live readings of the job process", "green")
            mon.add_sample(e)
        elif kind == "progress":
            self.pane(ProgressPane).update(e.get("stage", "?"), e.get("fraction", 0.0))
        elif kind == "log":
            self.pane(LogPane).write(e.get("text", ""), e.get("level", "info"))
        elif kind == "model":
            self.pane(ModelPane).show_model(e, source="loaded for this run")
            if e.get("task"):
                self.wb.task = e["task"]
        elif kind == "result" and e.get("phase") == "baseline":
            phase = e.get("report") or {}
            self.pane(LatencyPane).set_baseline(phase)
            self.pane(ThroughputPane).set_baseline(phase)
            self.pane(AccuracyPane).set_baseline(phase)
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
                msg = e.get("message", "the job failed") + (f"\n{e['hint']}" if e.get("hint") else "")
                self.tell(msg, "error", title=f"Run failed ({e.get('kind')})")
            self.pane(SummaryPane).clear()
        elif kind == "done":
            h.ok = bool(e.get("ok"))
            self.pane(MonitorPane).set_status("job finished; the last readings stay below")
            self.sub_title = self.wb.model_ref or ""

    def _on_final(self, h: JobHandle, report: dict) -> None:
        h.final = report
        session = h.session
        run_id = len(session.results.get("runs", [])) + 1
        try:
            session.environment = report.get("environment") or session.environment
            session.save()
            session.add_run({"id": run_id, **report})  # autosave: atomic, on arrival
            saved = True
        except InputError as exc:
            saved = False
            self.tell(exc.message, "error", title="Autosave failed")
        self.last_report = report
        self.pane(ProgressPane).finish("done")
        self.pane(LatencyPane).set_report(report)
        self.pane(ThroughputPane).set_report(report)
        self.pane(AccuracyPane).set_report(report)
        self.pane(SummaryPane).set_report(report, run_id)
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
            self._export_when_done = saved  # the job still runs until its ``done``: export then (_pump)

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
            self.tell(e.get("message", "inspect failed") + (f"\n{e['hint']}" if e.get("hint") else ""), "error",
                      title="Model")

    def _on_verify_event(self, h: JobHandle, e: dict) -> None:
        if e["type"] == "result" and e.get("phase") == "export":
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
            self.tell(e.get("message", "export failed") + (f"\n{e['hint']}" if e.get("hint") else ""), "error",
                      title="Export failed")

    # ------------------------------------------------------------------ sessions
    def action_save(self) -> None:
        current = self.session.name if self.session else None
        suggested = current or (self._auto_name(self.wb.model_ref) if self.wb.model_ref else "")

        def check(name: str) -> str | None:
            try:
                check_name(name)
            except InputError as exc:
                return exc.message
            if name != current and self.store.exists(name):
                return f"session {name!r} already exists; pick another name"
            return None

        self.push_screen(PromptDialog("Save session as:", suggested, check), self.save_session)

    def save_session(self, name: str | None) -> bool:
        if not name:
            return False
        try:
            recipe = self.wb.recipe()
            if self.session is None:
                self.session = self.store.create(name, recipe, {})
            else:
                if name != self.session.name:
                    if self.run_handle is not None and self.run_handle.active and \
                            self.run_handle.session is self.session:
                        self.tell("a run is writing to this session: rename it when the run ends", "warning")
                        return False
                    self.store.rename(self.session.name, name)
                    self.session = self.store.open(name)
                self.session.recipe = recipe
                self.session.save()
        except InputError as exc:
            self.tell(exc.message, "error", title="Save failed")
            return False
        self.tell(f"saved session {name} ({len(self.session.results.get('runs', []))} run(s)) in "
                  f"{self.store.root}")
        return True

    def action_sessions(self) -> None:
        busy = {self.run_handle.session.name} if self.run_handle and self.run_handle.active else set()
        self.push_screen(SessionsScreen(self.store, busy), self._opened)

    def _opened(self, name: str | None) -> None:
        if name:
            self.open_session(name)

    def open_session(self, name: str) -> bool:
        if self.run_handle is not None and self.run_handle.active:
            self.tell("a run is in progress: cancel it (x) or wait before opening a session", "warning")
            return False
        try:
            session = self.store.open(name)
        except InputError as exc:
            self.tell(exc.message, "error", title="Open failed")
            return False
        self.session = None
        self._cancel_inspect()
        self.wb.load_recipe(session.recipe)
        runs = session.results.get("runs", [])
        with self.batch_update():
            self.pane(OptimizationsPane).sync(self.wb)
            self.pane(SettingsPane).sync()
            last = runs[-1] if runs else None
            self.load_model(session.recipe.model.ref, inspect=last is None and self.auto_inspect)
            self.session = session  # after load_model, which detaches a session of another model
            if last:
                self.wb.task = last.get("task") or self.wb.task
                if last.get("model"):
                    self.pane(ModelPane).show_model(last["model"], source="from the session's last run")
                self._show_report(last, last.get("id"))
            else:
                for cls in (LatencyPane, ThroughputPane, AccuracyPane, SummaryPane):
                    self.pane(cls).clear()
            self.recheck()
        tunes = session.results.get("tunes") or []
        if tunes and not self.tuning:
            self.tune_state.reset(session.recipe.model.ref)
            self.tune_state.load_report(tunes[-1])
            self.tune_state.saved_in = name
            self._show_tune({"start", "trials", "frontier", "progress", "log"})
        self.sub_title = f"{session.recipe.model.ref} · session {name}"
        self.tell(f"opened session {name}: {len(runs)} run(s)" + (f", {len(tunes)} tune(s)" if tunes else ""))
        return True

    def _show_report(self, report: dict, run_id) -> None:
        self.last_report = report
        self.pane(LatencyPane).set_report(report)
        self.pane(ThroughputPane).set_report(report)
        self.pane(AccuracyPane).set_report(report)
        self.pane(SummaryPane).set_report(report, run_id)

    def on_session_renamed(self, message: SessionRenamed) -> None:
        if self.session is not None and self.session.name == message.old:
            self.session = self.store.open(message.new)

    def on_session_deleted(self, message: SessionDeleted) -> None:
        if self.session is not None and self.session.name == message.name:
            self.session = None

    def action_compare(self) -> None:
        if self.session is None or not self.session.results.get("runs"):
            self.tell("no runs to compare yet: run (r) or open a session (o)", "warning")
            return
        self.push_screen(CompareScreen(self.session.name, self.session.results["runs"],
                                       self.session.results.get("baseline"), self.wb.budget_pct))

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

        default = str(Path.cwd() / "exports" / s.name)
        self.push_screen(PromptDialog(f"Export session {s.name}'s model to folder:", default, check,
                                      suggester=ModelSuggester()), self.export_to)

    def export_to(self, path: str | None) -> None:
        if not path or self.session is None:
            return
        out = Path(path).expanduser().resolve()
        spec = {"job": "verify", "src": str(self.session.artifact_dir), "out": str(out)}
        self.export_handle = JobHandle("verify", spec, session=self.session).start()
        self.tell(f"exporting to {out} and verifying it reloads…")

    # ------------------------------------------------------------------ tune
    def tune_screen(self) -> TuneScreen:
        """The tune screen: installed once, so leaving it keeps its state and a running tune's view."""
        if not self.is_screen_installed("tune"):
            self.install_screen(TuneScreen(self.tune_state, self.tune_form), "tune")
        return self.get_screen("tune")

    def action_tune(self) -> None:
        screen = self.tune_screen()
        if self.screen is not screen:
            self.push_screen(screen)

    def _show_tune(self, changes: set[str]) -> None:
        if self.is_screen_installed("tune"):
            screen = self.get_screen("tune")
            if screen.is_mounted:
                screen.show(changes)

    def _tune_device(self) -> str:
        return self.wb.device if self.wb.device not in ("auto", None) else "cpu"

    def tune_problem(self) -> str | None:
        """Why a tune cannot start now (the first problem), or None."""
        if self.tuning:
            return "a tune is already running (x cancels it)"
        if self.run_handle is not None and self.run_handle.active:
            return "a run is in progress: its timings and the tune's would disturb each other; wait or cancel it"
        if not self.wb.model_ref:
            return "no model: load one in Setup first (esc, then l)"
        for name in ("max_accuracy_drop", "memory_mb", "budget", "opts", "max_trials", "min_gain",
                     "max_contention"):
            problem = check_field(name, getattr(self.tune_form, name), self.wb.task, self._tune_device())
            if problem:
                return problem
        return None

    def action_tune_start(self) -> None:
        screen = self.tune_screen()
        if self.screen is not screen:
            self.push_screen(screen)
        from workbench.tui.panes.tune_form import TuneFormPane

        problem = self.tune_problem()
        cfg = None
        if problem is None:
            try:
                cfg = build_config(self.tune_form, self.wb.recipe())
            except OptbenchError as exc:
                problem = exc.message
        if screen.is_mounted:
            screen.query_one(TuneFormPane).show_error(problem)
        if problem or cfg is None:
            self.tell(problem or "the tune could not be set up", "error", title="Cannot tune")
            return
        self._cancel_inspect()
        self.tune_state.reset(self.wb.model_ref)
        self.tune_handle = TuneHandle(cfg, cfg.recipe).start()
        opts = ", ".join(cfg.opts) if cfg.opts else "every optimization that applies"
        self.tune_state.log.append(("info", f"tune: {cfg.recipe.model.ref} · objective {cfg.objective} · accuracy "
                                            f"{cfg.accuracy.text} · budget {cfg.budget_s:.0f} s · {opts}"))
        self._show_tune({"start", "trials", "frontier", "progress", "log"})
        self.sub_title = f"{cfg.recipe.model.ref} · tuning"

    def action_tune_cancel(self) -> None:
        h = self.tune_handle
        if h is None or not h.active:
            self.tell("no tune is running", "information")
            return
        if not h.cancelling:
            h.cancelling = True
            self.tune_state.log.append(("warning", "cancel requested"))
            self._show_tune({"log"})
            self.run_worker(h.cancel, thread=True, group="cancel")

    def _pump_tune(self) -> None:
        h = self.tune_handle
        if h is None or h.finished:
            return
        events = h.poll()
        if not events:
            return
        changes: set[str] = set()
        for kind, payload in events:
            try:
                changes |= self.tune_state.apply(kind, payload)
            except Exception as exc:  # a malformed event must not take the UI down
                self.tune_state.log.append(("error", f"could not show a {kind} event: {exc!r}"))
                changes.add("log")
        with self.batch_update():
            if "end" in changes:
                self._on_tune_end(h)
            self._show_tune(changes)

    def _on_tune_end(self, h: TuneHandle) -> None:
        st = self.tune_state
        self.sub_title = self.wb.model_ref or ""
        if st.status == "done" and h.report is not None:
            name = self._save_tune(h.report, h.recipe)
            st.saved_in = name
            best = h.report.get("chosen")
            where = f"; saved in session {name}" if name else ""
            if best:
                obj = h.report.get("objective") or {}
                self.tell(f"tune finished: best {best['label']} ({fmt.ratio(best.get('gain'))} {obj.get('name', '')})"
                          f"{where} · a applies it to Setup, e exports it", title="Tune finished")
            else:
                self.tell(f"tune finished: no recipe meets the accuracy budget and improves on the baseline{where}",
                          "warning", title="Tune finished")
        elif st.status == "cancelled":
            self.tell("the tune was cancelled; its finished trials are cached (a new tune reuses them), nothing was "
                      "saved in the session", "warning", title="Cancelled")
        else:
            self.tell(st.error or "the tune failed", "error", title="Tune failed")

    def _save_tune(self, report: dict, base: Recipe) -> str | None:
        """The tune's report into the session's results (``tunes``) and its chosen recipe as the session's recipe,
        as ``optbench tune --session`` does. The open session when it holds this model, else a new one."""
        ref = base.model.ref
        try:
            s = self.session
            if s is None or s.recipe.model.ref != ref or not self.store.exists(s.name):
                s = self.store.create(self._auto_name(ref), Recipe(base.model, [], base.bench, base.eval,
                                                                   base.device), report.get("environment"))
                if self.wb.model_ref == ref:
                    self.session = s
            if report.get("chosen_recipe"):
                s.recipe = Recipe.from_dict(report["chosen_recipe"], where="the tune's chosen recipe")
            s.environment = report.get("environment") or s.environment
            s.save()
            s._refuse_if_corrupt(s.results_path, json.loads)
            s.results.setdefault("tunes", []).append(report)
            atomic.write_json(s.results_path, s.results)
        except OptbenchError as exc:
            self.tell(exc.message, "error", title="Saving the tune failed")
            return None
        return s.name

    def tuned_steps(self) -> list[dict] | None:
        best = self.tune_state.best
        return list(best["recipe"]) if best and best.get("recipe") is not None else None

    def action_tune_apply(self) -> bool:
        """Put the best recipe's optimizations (with their parameters) into Setup."""
        steps = self.tuned_steps()
        if steps is None:
            self.tell("no best recipe yet: a tune must finish a trial within the budget first", "warning")
            return False
        model = self.tune_state.model
        if model and model != self.wb.model_ref:
            self.tell(f"the tune's best recipe is for {model}; load that model first (l)", "warning")
            return False
        before = (list(self.wb.enabled), {k: dict(v) for k, v in self.wb.params.items()})
        self.wb.enabled, self.wb.params = [], {}
        try:
            for step in steps:
                self.wb.set_enabled(step["name"], True)
                for key, value in (step.get("params") or {}).items():
                    self.wb.set_param(step["name"], key, value)
        except InputError as exc:  # e.g. a saved tune of an optimization this registry no longer has
            self.wb.enabled, self.wb.params = before
            self.tell(exc.message, "error", title="Cannot apply the tune's recipe")
            return False
        with self.batch_update():
            self.pane(OptimizationsPane).sync(self.wb)
            problem = self.recheck()
            while self.screen is not self.main_screen and len(self.screen_stack) > 1:
                self.pop_screen()
            self.action_show_tab("setup")
        label = (self.tune_state.best or {}).get("label", "")
        if problem:
            self.tell(f"Setup holds the tune's best recipe ({label}) but it does not validate: {problem}", "error")
            return False
        self.tell(f"Setup now holds the tune's best recipe: {label} (r runs it; export after a run)")
        return True

    def action_tune_export(self) -> None:
        """Apply the best recipe, run it keeping the optimized model, then open the export prompt."""
        if self.tuning:
            self.tell("the tune is still running: export its best recipe when it ends", "warning")
            return
        if self.run_handle is not None and self.run_handle.active:
            self.tell("a run is in progress: export when it ends", "warning")
            return
        if not self.action_tune_apply():
            return
        if not self.wb.save_artifact:
            self.wb.save_artifact = True
            self.pane(SettingsPane).sync()
        self._export_after_run = True
        self.action_run()
        if self.run_handle is None or not self.run_handle.active:
            self._export_after_run = False
            return
        self.tell("running the best recipe to keep its model; the export prompt opens when the run ends")

    # ------------------------------------------------------------------ navigation, help, quit
    def action_focus_model(self) -> None:
        self.action_show_tab("setup")
        self.pane(ModelPane).query_one("#model-input").focus()

    def action_inspect(self) -> None:
        if not self.wb.model_ref:
            self.tell("no model yet: type one first (l)", "warning")
            return
        if self.run_handle is not None and self.run_handle.active:
            self.tell("a run is loading the model already", "warning")
            return
        self.pane(ModelPane).show_detected(detect(self.wb.model_ref), inspecting=True)
        self.start_inspect()

    TAB_FOCUS = {"setup": "#opt-list", "run": "#log", "results": "#acc-table"}

    def action_show_tab(self, tab: str) -> None:
        tabs = self.main_screen.query_one("#tabs", TabbedContent)
        if tabs.active == tab:
            return
        tabs.active = tab
        # Move the focus into the shown tab at once: TabbedContent follows a focus left in a hidden tab back there.
        self.main_screen.set_focus(self.main_screen.query_one(self.TAB_FOCUS[tab]))

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        if self.run_handle is not None and self.run_handle.active or \
                self.export_handle is not None and self.export_handle.active or self.tuning:
            def done(yes: bool | None) -> None:
                if yes:
                    self.stop_jobs()
                    self.exit()

            what = "A run" if self.run_handle is not None and self.run_handle.active else \
                "A tune" if self.tuning else "An export"
            self.push_screen(ConfirmDialog(f"{what} is in progress. Cancel it and quit?", yes="Quit",
                                           no="Keep running", danger=True), done)
            return
        self.stop_jobs()
        self.exit()

    def stop_jobs(self) -> None:
        """Cancel every job (blocking, at most ~2 s each); used when the app goes away."""
        if self.tune_handle is not None and self.tune_handle.active:
            self.tune_handle.cancel()
        for h in (self.run_handle, self.inspect_handle, self.export_handle):
            if h is not None and h.active:
                h.cancel()

    def on_unmount(self) -> None:
        self.stop_jobs()


def run_app(model: str | None = None, mouse: bool = True) -> int:
    """The ``optbench`` entry point (no arguments). Jobs never outlive the app: on exit, hang-up (a dropped SSH
    connection) or SIGTERM they are terminated, since nothing would be left to save their results."""
    import os
    import signal
    import threading

    app = OptbenchApp(model)

    def kill_jobs(sig: int) -> None:
        for h in (app.run_handle, app.inspect_handle, app.export_handle):
            if h is not None and h.active:
                h.cancelling = True
                try:
                    os.killpg(h.job.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
        if app.tune_handle is not None and app.tune_handle.active:
            app.tune_handle.kill_now(sig)

    def last_resort(code: int) -> None:
        # Textual's shutdown joins its writer thread, which blocks for as long as the terminal does not read (a
        # stalled SSH link, a terminal paused with ^S). After a hang-up or SIGTERM nobody is watching: kill what is
        # left and go. Session files are written atomically, so an exit here cannot leave one half-written.
        kill_jobs(signal.SIGKILL)
        os._exit(code)

    def on_signal(signum, frame) -> None:
        kill_jobs(signal.SIGTERM)
        watchdog = threading.Timer(EXIT_GRACE_S, last_resort, (128 + signum,))
        watchdog.daemon = True
        watchdog.start()
        app.exit(return_code=128 + signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGHUP, signal.SIGTERM)}
    try:
        app.run(mouse=mouse)
    finally:
        app.stop_jobs()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return app.return_code or 0
