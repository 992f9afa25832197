"""Model pane: type or pick a model, see what was detected before anything heavy runs."""

from __future__ import annotations

import os

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.suggester import Suggester
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from workbench.core.modelref import DEMOS
from workbench.tui import fmt

MODEL_HINT = "demo:minilm · ./folder · file.gguf · org/name"


class ModelSuggester(Suggester):
    """Inline completion: demo names and recent models by prefix; file system paths entry by entry."""

    def __init__(self, recent: list[str] | None = None) -> None:
        super().__init__(use_cache=False, case_sensitive=True)
        self.recent = list(recent or [])

    async def get_suggestion(self, value: str) -> str | None:
        if not value:
            return None
        for cand in [f"demo:{n}" for n in DEMOS] + self.recent:
            if cand.startswith(value) and cand != value:
                return cand
        if value.startswith(("/", ".", "~")) or os.sep in value:
            return complete_path(value)
        return None


def complete_path(value: str) -> str | None:
    """The first directory entry that extends ``value`` (folders end with '/'); hidden entries only if asked."""
    expanded = os.path.expanduser(value)
    folder, stem = os.path.split(expanded)
    try:
        names = sorted(os.listdir(folder or "."))
    except OSError:
        return None
    for name in names:
        if name.startswith(stem) and (stem.startswith(".") or not name.startswith(".")) and name != stem:
            full = os.path.join(folder, name)
            suffix = name[len(stem):] + ("/" if os.path.isdir(full) else "")
            return value + suffix
    if stem and os.path.isdir(expanded) and not value.endswith("/"):
        return value + "/"
    return None


class ModelInput(Input):
    """The model field; tab accepts the inline completion when there is one."""

    BINDINGS = [Binding("tab", "complete", "Complete", show=False),
                Binding("escape", "leave", "Leave field", show=False)]

    def action_leave(self) -> None:
        self.screen.focus_next()

    def action_complete(self) -> None:
        if self._suggestion and self._suggestion != self.value and self.cursor_at_end:
            self.value = self._suggestion
            self.cursor_position = len(self.value)
        else:
            self.screen.focus_next()


class ModelPane(Vertical):
    """Posts ``LoadRequested`` when the user submits a reference or picks one from the list."""

    BORDER_TITLE = "Model"

    class LoadRequested(Message):
        def __init__(self, ref: str) -> None:
            super().__init__()
            self.ref = ref

    def __init__(self, recent: list[str] | None = None, **kw) -> None:
        super().__init__(**kw)
        self.recent = list(recent or [])
        self.suggester = ModelSuggester(self.recent)

    def compose(self) -> ComposeResult:
        yield ModelInput(placeholder=MODEL_HINT, suggester=self.suggester, id="model-input", compact=True)
        yield OptionList(id="model-choices")
        yield Static(id="model-status")
        yield Static(id="model-info")

    def on_mount(self) -> None:
        self.set_recent(self.recent)
        self.show_empty()

    # ---- input
    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "model-input" and event.value.strip():
            event.stop()
            self.post_message(self.LoadRequested(event.value.strip()))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        ref = event.option.id
        if ref:
            self.query_one(ModelInput).value = ref
            self.post_message(self.LoadRequested(ref))

    def set_recent(self, recent: list[str]) -> None:
        self.recent = list(recent)
        self.suggester.recent = self.recent
        choices = self.query_one("#model-choices", OptionList)
        choices.clear_options()
        seen = set()
        for name, demo in DEMOS.items():
            ref = f"demo:{name}"
            seen.add(ref)
            choices.add_option(Option(Text.assemble((ref, "bold"), ("  demo, " + demo.task, "dim")), id=ref))
        for ref in self.recent:
            if ref not in seen:
                seen.add(ref)
                choices.add_option(Option(Text.assemble((_short(ref), ""), ("  recent", "dim")), id=ref))

    def set_ref(self, ref: str) -> None:
        self.query_one(ModelInput).value = ref

    # ---- what is known
    def show_empty(self) -> None:
        self._status("Type a model and press enter, or pick one below.", "dim")
        self.query_one("#model-info", Static).update("")

    def show_error(self, message: str) -> None:
        self._status(message, "bold red")

    def show_detected(self, info: dict, inspecting: bool) -> None:
        note = "detected from files (no torch); loading it in a job for the full picture…" if inspecting \
            else "detected from files (no torch); press i to load it for parameters and size"
        self._status(note, "dim italic")
        self.query_one("#model-info", Static).update(_table(info, full=None))

    def show_model(self, info: dict, source: str = "inspected") -> None:
        self._status(f"{source}: loaded by the job process", "green")
        self.query_one("#model-info", Static).update(_table(info, full=info))

    def show_inspect_failed(self, message: str) -> None:
        self._status(f"inspect failed: {message}", "bold red")

    def _status(self, text: str, style: str) -> None:
        self.query_one("#model-status", Static).update(Text(text, style=style))


def _short(ref: str, width: int = 34) -> str:
    return ref if len(ref) <= width else "…" + ref[-(width - 1):]


def _table(info: dict, full: dict | None) -> Table:
    t = Table.grid(padding=(0, 1))
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")
    kind = info.get("kind") or info.get("source")
    rows = [
        ("model", _short(str(info.get("ref", "")), 48)),
        ("source", kind),
        ("arch", info.get("architecture") or ("GGUF (read by the job)" if info.get("gguf_file") else None)),
        ("task", info.get("task")),
        ("parameters", fmt.params(full.get("parameters")) if full else "after inspect"),
        ("dtype", info.get("dtype")),
        ("size", fmt.mb(full.get("size_mb")) if full else
         (f"{fmt.size_bytes(info.get('weights_bytes'))} on disk" if info.get("weights_bytes") else None)),
        ("layers", info.get("layers")),
        ("hidden/heads", f"{info.get('hidden_size')} · {info.get('heads')}" if info.get("hidden_size") else None),
        ("vocab", info.get("vocab_size")),
    ]
    if full and full.get("device"):
        rows.append(("device", full["device"]))
    if info.get("title"):
        rows.append(("demo", info["title"]))
    for name, value in rows:
        t.add_row(name, fmt.NA if value is None else str(value))
    return t
