"""The App's tunes: the tune screen, starting and cancelling a tune, its events, applying and exporting its best.

A mixin of ``OptbenchApp``. The tune runs in a thread of the UI process (``tui/tuning.py`` says why), driving its
worker job; its events arrive as ``TuneEvents`` messages posted by a thread worker (``TuneHandle.watch``).
"""

from __future__ import annotations

from workbench.core.errors import InputError, OptbenchError
from workbench.core.recipe import Recipe
from workbench.tui import fmt
from workbench.tui.panes.optimizations import OptimizationsPane
from workbench.tui.panes.settings import SettingsPane
from workbench.tui.tuning import END, TuneEvents, TuneHandle, build_config, check_field



class TuneControl:
    tune_handle: TuneHandle | None = None

    def tune_screen(self):
        """The tune screen: installed once, so leaving it keeps its state and a running tune's view."""
        if not self.is_screen_installed("tune"):
            from workbench.tui.screens.tune import TuneScreen

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
        self.cancel_inspect()
        self.tune_state.reset(self.wb.model_ref)
        h = self.tune_handle = TuneHandle(cfg, cfg.recipe).start()
        self.run_worker(lambda: h.watch(self.post_message), thread=True, group="jobs", exit_on_error=False)
        self.jobs_changed()
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
            self.tune_state.log.append(("warning", "cancel requested"))
            self._show_tune({"log"})
            self.cancel_in_background(h)

    def on_tune_events(self, message: TuneEvents) -> None:
        h = message.handle
        changes: set[str] = set()
        for kind, payload in message.events:
            if kind == END:
                h.ended(payload)
            try:
                changes |= self.tune_state.apply(kind, payload)
            except Exception as exc:  # a malformed event must not take the UI down
                self.tune_state.log.append(("error", f"could not show a {kind} event: {exc!r}"))
                changes.add("log")
        with self.batch_update():
            if "end" in changes:
                self._on_tune_end(h)
            self._show_tune(changes)
        if h.finished:
            self.jobs_changed()

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
        """The tune's report and chosen recipe into the session (``SessionKeeper.record_tune``); its name."""
        try:
            return self.sessions.record_tune(report, base, self.wb.model_ref).name
        except OptbenchError as exc:
            self.tell(exc.message, "error", title="Saving the tune failed")
            return None

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

