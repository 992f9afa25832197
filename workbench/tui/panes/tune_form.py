"""Tune form: the objective, the accuracy budget (``1%``, ``0.01``, ``perplexity=2%,cosine=0.01``), an optional
memory cap, the time budget, an optional restriction to some optimizations and the search's knobs. Every field is
checked as it is typed with the CLI's own parsers and messages (``workbench.core.tune`` is torch-free), and the
search space the form would build is counted live from the registry."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.validation import ValidationResult, Validator
from textual.widgets import Input, Label, Select, Static

from workbench.core.tune import OBJECTIVES
from workbench.tui.tuning import OBJECTIVE_LABELS, TuneForm, check_field, space_preview

FIELDS = (  # (form field, label, placeholder)
    ("max_accuracy_drop", "accuracy drop", "1%"),
    ("memory_mb", "memory cap MB", "none"),
    ("budget", "time budget", "20m"),
    ("opts", "optimizations", "every one that applies"),
    ("max_trials", "max trials", "no limit"),
    ("min_gain", "min gain %", "5"),
    ("max_contention", "max contention %", "25"),
)
HINT = "drop: 1% (relative) · 0.01 (absolute) · ppl=2%,cosine=0.01 · time: 20m · 90s · 1h30m"


class FieldValidator(Validator):
    def __init__(self, pane: "TuneFormPane", name: str) -> None:
        super().__init__()
        self.pane, self.name = pane, name

    def validate(self, value: str) -> ValidationResult:
        problem = check_field(self.name, value, self.pane.model_task, self.pane.tune_device)
        return self.failure(problem) if problem else self.success()


class TuneFormPane(Vertical):
    BORDER_TITLE = "Tune"

    def __init__(self, form: TuneForm, **kw) -> None:
        super().__init__(**kw)
        self.form = form
        self.model_task: str | None = None
        self.tune_device = "cpu"
        self.model_ref: str | None = None
        self.errors: dict[str, str] = {}
        self.setup_text = ""

    def compose(self) -> ComposeResult:
        yield Static(id="tune-model")
        with Horizontal(classes="setting"):
            yield Label("objective", classes="setting-name")
            yield Select([(OBJECTIVE_LABELS[o], o) for o in OBJECTIVES], value=self.form.objective,
                         allow_blank=False, compact=True, id="tune-objective")
        for name, label, placeholder in FIELDS:
            with Horizontal(classes="setting"):
                yield Label(label, classes="setting-name")
                yield Input(str(getattr(self.form, name)), placeholder=placeholder,
                            id=f"tune-{name.replace('_', '-')}", compact=True,
                            validators=[FieldValidator(self, name)], validate_on=["changed"])
        yield Static(Text(HINT, style="dim"), id="tune-hint")
        yield Static(id="tune-error")
        yield Static(id="tune-space")

    def on_mount(self) -> None:
        self.redraw()

    def field_input(self, name: str) -> Input:
        return self.query_one(f"#tune-{name.replace('_', '-')}", Input)

    def set_context(self, model: str | None, task: str | None, device: str, setup_text: str = "") -> None:
        """The workbench's model and settings (what the tune will run on)."""
        self.model_ref, self.model_task, self.tune_device, self.setup_text = model, task, device, setup_text
        for name, _, _ in FIELDS:
            w = self.field_input(name)
            w.validate(w.value)
            self._take(name, w.value, w.is_valid)
        self.redraw()

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        name = (event.input.id or "")[5:].replace("-", "_")
        if name not in dict((n, 1) for n, _, _ in FIELDS):
            return
        valid = event.validation_result is None or event.validation_result.is_valid
        self._take(name, event.value, valid, event.validation_result)
        self.redraw()

    def _take(self, name: str, value: str, valid: bool, result=None) -> None:
        setattr(self.form, name, value)
        if valid:
            self.errors.pop(name, None)
        else:
            msg = "; ".join(result.failure_descriptions) if result is not None else \
                check_field(name, value, self.model_task, self.tune_device)
            self.errors[name] = msg or "invalid"

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        if event.value is not Select.BLANK and event.select.id == "tune-objective":
            self.form.objective = str(event.value)
            self.redraw()

    def show_error(self, message: str | None) -> None:
        """A problem found when starting (the whole config, e.g. no model or ``--eval none``)."""
        self.query_one("#tune-error", Static).update(Text("✗ " + message, style="bold red") if message else "")

    def sync(self, form: TuneForm) -> None:
        self.form = form
        self.query_one("#tune-objective", Select).value = form.objective
        for name, _, _ in FIELDS:
            self.field_input(name).value = str(getattr(form, name))

    def redraw(self) -> None:
        head = Text()
        if self.model_ref:
            head.append(self.model_ref, style="bold cyan")
            head.append(f" ({self.model_task or 'task from the worker'}, {self.tune_device})", style="dim")
        else:
            head.append("no model: load one in Setup first (esc, then l)", style="yellow")
        if self.setup_text:
            head.append(f"\n{self.setup_text}", style="dim")
        self.query_one("#tune-model", Static).update(head)
        if self.errors:
            self.query_one("#tune-error", Static).update(
                Text("\n".join("✗ " + m for m in self.errors.values()), style="bold red"))
        else:
            self.query_one("#tune-error", Static).update("")
        self.query_one("#tune-space", Static).update(self._space_text())

    def _space_text(self) -> Text:
        if "opts" in self.errors:
            return Text("")
        sp = space_preview(self.form, self.model_task, self.tune_device)
        if sp is None:
            return Text("")
        out = Text.assemble(("search space ", "bold"), f"{sp['size']} candidates ",
                            (f"({sp['singles']} single, {sp['pairs']} pairs, {sp['triples']} triples"
                             + (f"; {sp['capped']} over the cap" if sp["capped"] else "") + ")", "dim"))
        if sp["skipped_labels"]:
            out.append(f"\nnot applicable: {', '.join(sp['skipped_labels'][:6])}"
                       + (" …" if len(sp["skipped_labels"]) > 6 else ""), style="dim")
        if not self.model_task:
            out.append("\n(counted for causal LMs until the task is known)", style="dim")
        return out
