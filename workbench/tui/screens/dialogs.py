"""Small modal dialogs: confirm (yes/no), prompt (one line of text, checked before it closes), info."""

from __future__ import annotations

from typing import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.suggester import Suggester
from textual.widgets import Button, Input, Label, Static

from workbench.tui import keys


class ConfirmDialog(ModalScreen[bool]):
    BINDINGS = keys.bindings(keys.DIALOG)

    def __init__(self, question: str, yes: str = "Yes", no: str = "No", danger: bool = False) -> None:
        super().__init__(classes="dialog-screen")
        self.question, self.yes, self.no, self.danger = question, yes, no, danger

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="dialog-question")
            with Horizontal(classes="dialog-buttons"):
                yield Button(self.yes, variant="error" if self.danger else "primary", id="yes")
                yield Button(self.no, id="no")

    def on_mount(self) -> None:
        self.query_one("#no" if self.danger else "#yes", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")

    def action_cancel(self) -> None:
        self.dismiss(False)


class PromptDialog(ModalScreen[str | None]):
    """Asks for one line; ``check`` returns an error message (shown, dialog stays) or None (dialog closes)."""

    BINDINGS = keys.bindings(keys.DIALOG)
    # focused when the screen becomes active (Textual's own hook; an on_mount query of the Input raised NoMatches
    # once on a loaded machine, taking the app down)
    AUTO_FOCUS = "#prompt-input"

    def __init__(self, question: str, value: str = "", check: Callable[[str], str | None] | None = None,
                 suggester: Suggester | None = None, placeholder: str = "") -> None:
        super().__init__(classes="dialog-screen")
        self.question, self.value, self.check = question, value, check
        self.suggester, self.placeholder = suggester, placeholder

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="dialog-question")
            yield Input(self.value, placeholder=self.placeholder, suggester=self.suggester, id="prompt-input")
            yield Static("", id="prompt-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("OK", variant="primary", id="ok")
                yield Button("Cancel", id="cancel")

    def _submit(self) -> None:
        value = self.query_one(Input).value.strip()
        problem = self.check(value) if self.check else (None if value else "expected a value")
        if problem:
            self.query_one("#prompt-error", Static).update(Text("✗ " + problem, style="bold red"))
            return
        self.dismiss(value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "ok":
            self._submit()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class InfoDialog(ModalScreen[None]):
    BINDINGS = keys.bindings(keys.DIALOG)

    def __init__(self, title: str, body) -> None:
        super().__init__(classes="dialog-screen")
        self.title_text, self.body = title, body

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(Text(self.title_text, style="bold"), classes="dialog-question")
            yield Static(self.body, id="info-body")
            with Horizontal(classes="dialog-buttons"):
                yield Button("OK", variant="primary", id="ok")

    def on_mount(self) -> None:
        self.query_one(Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)
