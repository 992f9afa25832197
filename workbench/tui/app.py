"""The optbench workbench: a Textual app over the core engine.

The app is the controller: it holds the setup (``Workbench``), the open session (``SessionKeeper``) and the running
jobs. Its parts: model and setup edits, sessions, navigation and leaving here; runs, inspects and exports in
``run_control.py``; tunes in ``tune_control.py`` (mixins: Textual dispatches actions and messages to the App). It
never imports torch or transformers; the job process does the heavy work and a crash there cannot take the app down.
"""

from __future__ import annotations

from pathlib import Path

from textual.app import App
from textual.binding import Binding
from textual.widgets import TabbedContent

from workbench.core import userconfig
from workbench.core.errors import InputError
from workbench.core.session import Session, SessionStore
from workbench.tui import keys
from workbench.tui.commands import WorkbenchCommands
from workbench.tui.detect import detect
from workbench.tui.panes.accuracy import AccuracyPane
from workbench.tui.panes.model import ModelPane
from workbench.tui.panes.optimizations import OptimizationsPane
from workbench.tui.panes.settings import SettingsPane
from workbench.tui.persistence import SessionKeeper
from workbench.tui.run_control import RESULT_PANES, RunControl
from workbench.tui.screens.main import APP_LEVEL, MainScreen
from workbench.tui.state import Workbench
from workbench.tui.tune_control import TuneControl
from workbench.tui.tuning import TuneForm, TuneState

EXIT_GRACE_S = 8.0  # after SIGHUP/SIGTERM: how long the UI may take to exit before it is ended without the terminal


class OptbenchApp(RunControl, TuneControl, App):
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
        self.sessions = SessionKeeper(SessionStore(sessions_root))
        self.initial_model = model
        self.auto_inspect = auto_inspect
        self.recent = userconfig.load_recent()
        self.keymap_overrides, self.keymap_error = userconfig.load_keymap()
        self.tune_state = TuneState()  # what the tune screen shows: the running tune, or the last one
        self.tune_form = TuneForm()
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
    def store(self) -> SessionStore:
        return self.sessions.store

    @property
    def session(self) -> Session | None:
        """The open session: where the next run's results go."""
        return self.sessions.current

    @session.setter
    def session(self, value: Session | None) -> None:
        self.sessions.current = value

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
        if ref != self.wb.model_ref:
            self.sessions.model_changed(ref)
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

        self.action_show_tab("setup")
        box = self.pane(OptimizationsPane).query_one(f"#opt-{safe_id(name)}", Checkbox)
        box.value = not box.value  # the pane posts Changed, which updates the workbench
        # The focus goes to the toggle (also from the command palette, which would hand it back to wherever it was,
        # e.g. the model box, where the next "r" would be typed into the model name instead of running).
        self.call_after_refresh(box.focus)

    def recheck(self) -> str | None:
        return self.pane(OptimizationsPane).show_check(self.wb)

    # ------------------------------------------------------------------ sessions
    def action_save(self) -> None:
        from workbench.tui.screens.dialogs import PromptDialog

        current = self.session.name if self.session else None
        suggested = current or (self.sessions.auto_name(self.wb.model_ref) if self.wb.model_ref else "")
        self.push_screen(PromptDialog("Save session as:", suggested, self.sessions.name_problem), self.save_session)

    def save_session(self, name: str | None) -> bool:
        if not name:
            return False
        writing = self.run_handle.session if self.run_handle is not None and self.run_handle.active else None
        try:
            session = self.sessions.save_as(name, self.wb.recipe(), writing)
        except InputError as exc:
            self.tell(exc.message, "warning" if writing is not None else "error", title="Save failed")
            return False
        self.tell(f"saved session {name} ({len(session.results.get('runs', []))} run(s)) in {self.store.root}")
        return True

    def action_sessions(self) -> None:
        busy = {self.run_handle.session.name} if self.run_handle and self.run_handle.active else set()
        from workbench.tui.screens.sessions import SessionsScreen

        self.push_screen(SessionsScreen(self.store, busy), self._opened)

    def _opened(self, name: str | None) -> None:
        if name:
            self.open_session(name)

    def open_session(self, name: str) -> bool:
        if self.run_handle is not None and self.run_handle.active:
            self.tell("a run is in progress: cancel it (x) or wait before opening a session", "warning")
            return False
        try:
            session = self.sessions.open(name)
        except InputError as exc:
            self.tell(exc.message, "error", title="Open failed")
            return False
        self.session = None
        self.cancel_inspect()
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
                self.show_report(last, last.get("id"))
            else:
                for cls in RESULT_PANES:
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

    def on_session_renamed(self, message) -> None:
        self.sessions.renamed(message.old, message.new)

    def on_session_deleted(self, message) -> None:
        self.sessions.deleted(message.name)

    def action_compare(self) -> None:
        if self.session is None or not self.session.results.get("runs"):
            self.tell("no runs to compare yet: run (r) or open a session (o)", "warning")
            return
        from workbench.tui.screens.compare import CompareScreen

        self.push_screen(CompareScreen(self.session.name, self.session.results["runs"],
                                       self.session.results.get("baseline"), self.wb.budget_pct))

    # ------------------------------------------------------------------ navigation, help, quit
    def action_focus_model(self) -> None:
        self.action_show_tab("setup")
        self.pane(ModelPane).query_one("#model-input").focus()

    TAB_FOCUS = {"setup": "#opt-list", "run": "#log", "results": "#acc-table"}

    def action_show_tab(self, tab: str) -> None:
        tabs = self.main_screen.query_one("#tabs", TabbedContent)
        if tabs.active == tab:
            return
        tabs.active = tab
        # Move the focus into the shown tab at once: TabbedContent follows a focus left in a hidden tab back there.
        self.main_screen.set_focus(self.main_screen.query_one(self.TAB_FOCUS[tab]))

    def action_help(self) -> None:
        from workbench.tui.screens.help import HelpScreen

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
            from workbench.tui.screens.dialogs import ConfirmDialog

            self.push_screen(ConfirmDialog(f"{what} is in progress. Cancel it and quit?", yes="Quit",
                                           no="Keep running", danger=True), done)
            return
        self.stop_jobs()
        self.exit()

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
                h.job.signal(sig)
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
