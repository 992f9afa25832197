"""Optimizations pane: one panel per family, one toggle per optimization, one field per parameter — all built from
the registry's typed parameters, so a new optimization shows up here without UI code.
"""

from __future__ import annotations

import re
from collections import defaultdict

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.validation import ValidationResult, Validator
from textual.widgets import Checkbox, Collapsible, Input, Label, Select, Static

from workbench.core import optimizations
from workbench.core.errors import InputError
from workbench.core.optimizations.base import STAGES, OptSpec, Param


def safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def family_title(family: str) -> str:
    return family.replace("-", " ").replace("_", " ").capitalize()


class ParamValidator(Validator):
    """Bounds and type checked as you type, by the core's own ``Param.coerce``."""

    def __init__(self, spec: OptSpec, param: Param) -> None:
        super().__init__()
        self.spec, self.param = spec, param

    def validate(self, value: str) -> ValidationResult:
        if value.strip() == "":
            return self.success()  # empty: the default
        try:
            self.param.coerce(self.spec.name, value)
        except InputError as exc:
            return self.failure(exc.message)
        return self.success()


def _tags(spec: OptSpec) -> str:
    tags = []
    if tuple(spec.devices) != ("cpu", "cuda"):
        tags.append(" or ".join(spec.devices) + " only")
    if len(spec.tasks) < 3:
        tags.append(", ".join(spec.tasks))
    if spec.exportable != "yes":
        tags.append({"custom": "exports (optbench format)", "no": "not exportable"}.get(spec.exportable,
                                                                                      spec.exportable))
    if spec.requires:
        tags.append("needs " + ", ".join(spec.requires))
    return " · ".join(tags)


class OptRow(Vertical):
    """One optimization: toggle, summary and why it cannot be combined; its parameters are built the first time it
    is switched on (a registry of dozens of optimizations stays a few hundred widgets, not thousands)."""

    def __init__(self, spec: OptSpec) -> None:
        super().__init__(classes="opt-row", id=f"row-{safe_id(spec.name)}")
        self.spec = spec
        self.reason: str | None = None
        self.built = False

    def compose(self) -> ComposeResult:
        spec = self.spec
        box = Checkbox(spec.name, False, id=f"opt-{safe_id(spec.name)}", classes="opt-toggle")
        box.opt_name = spec.name
        box.tooltip = spec.summary + (f"\n\n{spec.notes}" if spec.notes else "")
        yield box
        yield Static(self._text(), classes="opt-text")

    def _text(self) -> Text:
        text = Text(self.spec.summary)
        tags = _tags(self.spec)
        if tags:
            text.append(f"  [{tags}]", style="dim")
        if self.reason:
            text.append("\n⚠ " + self.reason, style="yellow")
        return text

    def set_reason(self, reason: str | None) -> None:
        if reason != self.reason:
            self.reason = reason
            self.set_class(reason is not None, "-blocked")
            self.query_one(".opt-text", Static).update(self._text())

    def build_params(self, given: dict) -> None:
        """Mount the parameter fields (once), showing ``given`` raw values where set, else the defaults."""
        if self.built:
            return
        self.built = True
        box = Vertical(classes="opt-params")
        widgets = []
        if self.spec.notes:
            widgets.append(Static(Text(self.spec.notes, style="dim italic"), classes="opt-notes"))
        for p in self.spec.params:
            widgets += self._param(p, given.get(p.name, p.default))
        self.mount(box)
        box.mount_all(widgets)

    def _param(self, p: Param, value) -> list:
        wid = f"p-{safe_id(self.spec.name)}-{safe_id(p.name)}"
        parts = []
        if p.type is bool:
            try:
                on = bool(p.coerce(self.spec.name, value))
            except InputError:
                on = bool(p.default)
            w = Checkbox(p.name, on, id=wid, classes="param-bool")
        elif p.choices:
            try:
                chosen = p.coerce(self.spec.name, value)
            except InputError:
                chosen = p.default
            w = Select([(str(c), c) for c in p.choices], value=chosen, allow_blank=False, id=wid,
                       compact=True, classes="param-select")
            parts.append(Label(p.name, classes="param-name"))
        else:
            w = Input(str(value), placeholder=str(p.default), validators=[ParamValidator(self.spec, p)],
                      validate_on=["changed"], id=wid, compact=True, classes="param-input")
            parts.append(Label(p.name, classes="param-name"))
        w.opt_name, w.param_name = self.spec.name, p.name
        w.tooltip = p.help
        parts += [w, Static(Text(p.help + _bounds(p), style="dim"), classes="param-help")]
        return [Horizontal(*parts, classes="param"), Static("", classes="param-error", id=f"err-{wid}")]


def _bounds(p: Param) -> str:
    if p.choices or p.type is bool:
        return ""
    if p.min is not None and p.max is not None:
        return f" [{p.min}…{p.max}]"
    if p.min is not None:
        return f" (≥ {p.min})"
    if p.max is not None:
        return f" (≤ {p.max})"
    return ""


class OptimizationsPane(Vertical):
    """The apply order and the validator's verdict stay in view above the scrolling list of families."""

    BORDER_TITLE = "Optimizations"

    def __init__(self, workbench, **kw) -> None:
        super().__init__(**kw)
        self.wb = workbench

    class Changed(Message):
        """The user toggled an optimization or edited a parameter (the app re-validates)."""

        def __init__(self, name: str, param: str | None, value) -> None:
            super().__init__()
            self.name, self.param, self.value = name, param, value

    def compose(self) -> ComposeResult:
        yield Static(id="opt-order")
        yield Static(id="opt-check")
        families: dict[str, list[OptSpec]] = defaultdict(list)
        for spec in optimizations.all_specs():
            families[spec.family].append(spec)
        order = sorted(families, key=lambda f: (min(STAGES[s.stage] for s in families[f]), f))
        with VerticalScroll(id="opt-list"):
            for family in order:
                with Collapsible(title=f"{family_title(family)} ({len(families[family])})", collapsed=False,
                                 id=f"family-{safe_id(family)}", classes="family"):
                    for spec in families[family]:
                        yield OptRow(spec)

    # ---- user edits -> messages
    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        cb = event.checkbox
        name = getattr(cb, "opt_name", None)
        if name is None:
            return
        event.stop()
        param = getattr(cb, "param_name", None)
        if param is None:
            row = self.query_one(f"#row-{safe_id(name)}", OptRow)
            row.set_class(cb.value, "-enabled")
            if cb.value:
                row.build_params(self.wb.params.get(name, {}))
        self.post_message(self.Changed(name, param, cb.value))

    def on_input_changed(self, event: Input.Changed) -> None:
        name = getattr(event.input, "opt_name", None)
        if name is None:
            return
        event.stop()
        err = self.query_one(f"#err-{event.input.id}", Static)
        if event.validation_result is not None and not event.validation_result.is_valid:
            err.update(Text("✗ " + "; ".join(event.validation_result.failure_descriptions), style="bold red"))
        else:
            err.update("")
        self.post_message(self.Changed(name, event.input.param_name, event.value))

    def on_select_changed(self, event: Select.Changed) -> None:
        name = getattr(event.select, "opt_name", None)
        if name is None or event.value is Select.BLANK:
            return
        event.stop()
        self.post_message(self.Changed(name, event.select.param_name, event.value))

    # ---- state -> view
    def sync(self, workbench) -> None:
        """Set toggles and fields from the workbench state (opening a session)."""
        self.wb = workbench
        for row in self.query(OptRow):
            spec = row.spec
            on = spec.name in workbench.enabled
            given = workbench.params.get(spec.name, {})
            row.set_class(on, "-enabled")
            if on and not row.built:
                row.build_params(given)  # created with the session's values
            elif row.built:
                for p in spec.params:
                    w = row.query_one(f"#p-{safe_id(spec.name)}-{safe_id(p.name)}")
                    value = given.get(p.name, p.default)
                    try:
                        coerced = p.coerce(spec.name, value)
                    except InputError:
                        coerced = p.default
                    if isinstance(w, Input):
                        w.value = str(value)
                    elif isinstance(w, Checkbox):
                        w.value = bool(coerced)
                    elif isinstance(w, Select):
                        w.value = coerced
            row.query_one(f"#opt-{safe_id(spec.name)}", Checkbox).value = on

    def show_check(self, workbench) -> str | None:
        """Show the apply order, the validator's verdict and, per optimization, why it cannot be added."""
        steps = workbench.steps()
        order = self.query_one("#opt-order", Static)
        if steps:
            line = Text("Apply order: ", style="bold")
            for i, s in enumerate(steps, 1):
                if i > 1:
                    line.append(" → ", style="dim")
                line.append(f"{i} {s.name}", style="cyan")
            order.update(line)
        else:
            order.update(Text.assemble(("Apply order: ", "bold"),
                                       ("none on — a run measures the baseline only", "dim")))
        _, problem = workbench.check()
        check = self.query_one("#opt-check", Static)
        if problem and workbench.model_ref:
            check.update(Text("✗ " + problem, style="bold red"))
        elif problem and workbench.enabled:
            own = workbench.problem(workbench.enabled)
            check.update(Text("✗ " + own, style="bold red") if own else Text("✓ combination is valid", "green"))
        elif workbench.model_ref:
            verdict = Text("✓ recipe is valid" + (f" for {workbench.task}" if workbench.task else ""),
                           style="green")
            warning = workbench.hardware_warning()
            if warning:
                verdict.append("\n⚠ " + warning, style="yellow")
            check.update(verdict)
        else:
            check.update(Text("Pick a model to check task and device support.", style="dim"))
        for row in self.query(OptRow):
            reason = workbench.blocked_reason(row.spec.name)
            row.set_reason(reason.removeprefix("--opt ") if reason else None)
        return problem
