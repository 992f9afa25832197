"""The workbench screen: Setup (model, settings, optimizations), Live (progress, monitor, log) and Results
(summary, latency, throughput, accuracy) tabs. Its keys call the app's actions; the app holds the state."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, TabbedContent, TabPane

from workbench.tui import keys
from workbench.tui.panes.accuracy import AccuracyPane
from workbench.tui.panes.latency import LatencyPane
from workbench.tui.panes.model import ModelPane
from workbench.tui.panes.monitor import MonitorPane
from workbench.tui.panes.optimizations import OptimizationsPane
from workbench.tui.panes.progress_log import LogPane, ProgressPane
from workbench.tui.panes.settings import SettingsPane
from workbench.tui.panes.summary import SummaryPane
from workbench.tui.panes.throughput import ThroughputPane

APP_LEVEL = {"optbench.help", "optbench.quit"}  # bound on the app (every screen); the rest only here


def main_bindings() -> list[Binding]:
    return [Binding(k.key, f"app.{k.action}", k.description, show=k.show, id=k.id)
            for k in keys.MAIN if k.id not in APP_LEVEL]


class MainScreen(Screen):
    BINDINGS = main_bindings()

    def __init__(self, workbench, recent: list[str]) -> None:
        super().__init__(id="main")
        self.wb = workbench
        self.recent = recent

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="⚙")
        with TabbedContent(initial="setup", id="tabs"):
            with TabPane("Setup", id="setup"):
                with Horizontal(id="setup-cols"):
                    with VerticalScroll(id="setup-left"):
                        yield ModelPane(self.recent, id="model-pane", classes="pane")
                        yield SettingsPane(self.wb, id="settings-pane", classes="pane")
                    yield OptimizationsPane(self.wb, id="opt-pane", classes="pane")
            with TabPane("Live", id="run"):
                with Horizontal(id="run-cols"):
                    with Vertical(id="run-left"):
                        yield ProgressPane(id="progress-pane", classes="pane")
                        yield MonitorPane(id="monitor-pane", classes="pane")
                    yield LogPane(id="log-pane", classes="pane")
            with TabPane("Results", id="results"):
                with Vertical(id="results-box"):
                    yield SummaryPane(id="summary-pane", classes="pane")
                    with Horizontal(id="results-cols"):
                        yield LatencyPane(id="latency-pane", classes="pane")
                        yield ThroughputPane(id="throughput-pane", classes="pane")
                    yield AccuracyPane(id="accuracy-pane", classes="pane")
        yield Footer()

    def on_mount(self) -> None:
        self.app.main_ready()
