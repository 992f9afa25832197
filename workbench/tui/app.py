"""Placeholder Textual app until the workbench UI lands (issue 3): shows the engine is reachable."""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.widgets import Footer, Header, Static

from workbench.core import optimizations
from workbench.core.modelref import DEFAULT_DEMO


class OptbenchApp(App):
    TITLE = "optbench"
    BINDINGS = [("q", "quit", "Quit")]

    def __init__(self, model: str | None = None) -> None:
        super().__init__()
        self.model_ref = model or DEFAULT_DEMO

    def compose(self) -> ComposeResult:
        yield Header()
        names = ", ".join(s.name for s in optimizations.all_specs())
        yield Static(f"model: {self.model_ref}\noptimizations: {names}\n\nThe interactive workbench is coming; "
                     f"use `optbench run --model {self.model_ref} --opt ...` meanwhile.")
        yield Footer()


def run_app(model: str | None = None, mouse: bool = True) -> int:
    OptbenchApp(model).run(mouse=mouse)
    return 0
