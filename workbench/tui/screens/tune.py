"""The tune screen (t or F8 on the workbench, or "Tune" in the command palette): find the best recipe for the model
loaded in the workbench within an accuracy budget, and watch the Pareto frontier form.

Left: the form (objective, accuracy budget, memory cap, time budget, optimizations, search knobs; checked as typed
with the CLI's messages) and the progress (trial running, trials run and decided, elapsed / budget, best so far,
the tune's log). Right: the scatter of every trial (accuracy budget used vs gain, frontier line, budget line) and
the table of trials or frontier recipes.

The tune itself runs in a daemon thread of the UI process that drives a ``tune-worker`` job process; why a
thread and not a subprocess, and how cancel and quitting stop the worker, is in ``workbench/tui/tuning.py``. The
app owns the running tune (``app.tune_handle``) and its ``TuneState``; this screen is installed once and only
renders that state, so leaving it (esc) does not stop the tune and coming back shows where it is.

When the tune ends, the app saves its report and best recipe into the session (``results.json["tunes"]``,
``session.toml``'s recipe, exactly as ``optbench tune --session`` does); a (F9) puts the best recipe into Setup,
e (F7) applies it, runs it keeping the model and opens the usual export prompt when the run ends.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header

from workbench.tui import keys
from workbench.tui.panes.tune_form import TuneFormPane
from workbench.tui.panes.tune_progress import TuneProgressPane
from workbench.tui.panes.tune_scatter import TuneScatterPane
from workbench.tui.panes.tune_table import TuneTablePane
from workbench.tui.tuning import TuneForm, TuneState

CLOCK_S = 0.5  # the elapsed clock between the tune's own progress events


def tune_bindings() -> list[Binding]:
    return [Binding(k.key, f"app.{k.action}" if k.palette else k.action, k.description, show=k.show, id=k.id)
            for k in keys.TUNE]


class TuneScreen(Screen):
    BINDINGS = tune_bindings()

    def __init__(self, state: TuneState, form: TuneForm) -> None:
        super().__init__(id="tune-screen")
        self.state = state
        self.form = form

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="⚙")
        with Horizontal(id="tune-cols"):
            with VerticalScroll(id="tune-left"):
                yield TuneFormPane(self.form, id="tune-form-pane", classes="pane")
                yield TuneProgressPane(self.state, id="tune-progress-pane", classes="pane")
            with Vertical(id="tune-right"):
                yield TuneScatterPane(self.state, id="tune-scatter-pane", classes="pane")
                yield TuneTablePane(self.state, id="tune-table-pane", classes="pane")
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(CLOCK_S, self._tick)
        self.sync_context()

    def on_screen_resume(self) -> None:
        self.sync_context()
        self.show({"start", "trials", "frontier", "progress", "log"})

    def _tick(self) -> None:
        if self.state.active and self.is_current:
            self.query_one(TuneProgressPane).redraw()

    def sync_context(self) -> None:
        """The workbench's model and settings, shown in the form (what a tune would run on)."""
        app = self.app
        wb = getattr(app, "wb", None)
        if wb is None:
            return
        b, e = wb.bench, wb.eval
        setup = f"per trial, from Setup: seq {b.seq_len} · batch {b.batch or 'auto'} · ≥{b.min_iters} calls, " \
                f"≥{b.min_seconds:g} s · eval {e.source}"
        device = wb.device if wb.device not in ("auto", None) else "cpu"
        self.query_one(TuneFormPane).set_context(wb.model_ref, wb.task, device, setup)

    def show(self, changes: set[str]) -> None:
        """Redraw the panes an update touched (called by the app after it applied a batch of tune events)."""
        if not self.is_mounted:
            return
        if changes & {"start", "trials", "frontier", "end"}:
            self.query_one(TuneScatterPane).redraw()
            self.query_one(TuneTablePane).redraw()
        if changes & {"start", "progress", "log", "sample", "end", "trials", "frontier"}:
            self.query_one(TuneProgressPane).redraw()

    def action_cycle_view(self) -> None:
        self.query_one(TuneTablePane).cycle_view()

    def action_close(self) -> None:
        self.app.pop_screen()
