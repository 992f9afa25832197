"""Run settings pane: device, bench and eval settings (typed and bounded by the core's dataclasses), the accuracy
budget used to colour deltas, and whether to keep the optimized model in the session.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.validation import ValidationResult, Validator
from textual.widgets import Checkbox, Input, Label, Select, Static

from workbench.core.errors import InputError
from workbench.core.recipe import DEVICES
from workbench.tui.state import coerce_setting, setting_fields

HELP = {
    "batch": "inputs per call (empty: 1 for causal LMs, 8 for encoders)",
    "seq_len": "prompt / input tokens",
    "new_tokens": "generated tokens per timed call (causal LM)",
    "warmup": "untimed calls first",
    "min_iters": "timed calls at least",
    "min_seconds": "timed seconds at least",
    "max_seconds": "cap per bench, warm-up included (empty: none); a capped bench is marked",
    "monitor_hz": "monitor samples per second",
    "source": "builtin, none, a .txt/.jsonl/.csv file or hf:NAME[:CONFIG]",
    "token_budget": "causal LM: tokens scored",
    "window": "causal LM: tokens per window",
    "max_samples": "encoder: texts evaluated",
}


class SettingValidator(Validator):
    def __init__(self, obj, name: str) -> None:
        super().__init__()
        self.obj, self.name = obj, name

    def validate(self, value: str) -> ValidationResult:
        try:
            coerce_setting(self.obj, self.name, value)
        except InputError as exc:
            return self.failure(exc.message)
        return self.success()


class BudgetValidator(Validator):
    def validate(self, value: str) -> ValidationResult:
        try:
            v = float(value)
        except ValueError:
            return self.failure("budget: expected a number of percent, e.g. 1")
        return self.success() if 0 <= v <= 100 else self.failure("budget: expected 0 to 100 (%)")


class SettingsPane(Vertical):
    BORDER_TITLE = "Run settings"

    class Changed(Message):
        def __init__(self, section: str, name: str, value) -> None:
            super().__init__()
            self.section, self.name, self.value = section, name, value

    def __init__(self, workbench, **kw) -> None:
        super().__init__(**kw)
        self.wb = workbench

    def compose(self) -> ComposeResult:
        with Horizontal(classes="setting"):
            yield Label("device", classes="setting-name")
            yield Select([(d, d) for d in DEVICES], value=self.wb.device, allow_blank=False, compact=True,
                         id="set-device")
        with Horizontal(classes="setting"):
            yield Label("budget %", classes="setting-name")
            yield Input(f"{self.wb.budget_pct:g}", id="set-budget", compact=True, validators=[BudgetValidator()],
                        validate_on=["changed"])
            yield Static(Text("worst accepted accuracy change", style="dim"), classes="setting-help")
        yield Checkbox("keep the optimized model (for export)", self.wb.save_artifact,
                       id="set-artifact")
        for section, obj in (("bench", self.wb.bench), ("eval", self.wb.eval)):
            for name, _kind, value in setting_fields(obj):
                with Horizontal(classes="setting"):
                    yield Label(name.replace("_", " "), classes="setting-name")
                    w = Input("" if value is None else str(value), id=f"set-{section}-{name}", compact=True,
                              validators=[SettingValidator(obj, name)], validate_on=["changed"])
                    w.section, w.setting = section, name
                    yield w
                    yield Static(Text(HELP.get(name, ""), style="dim"), classes="setting-help")
        yield Static("", id="settings-error")

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        err = self.query_one("#settings-error", Static)
        result = event.validation_result
        if result is not None and not result.is_valid:
            err.update(Text("✗ " + "; ".join(result.failure_descriptions), style="bold red"))
            return
        err.update("")
        if event.input.id == "set-budget":
            self.post_message(self.Changed("ui", "budget_pct", float(event.value)))
            return
        section, name = event.input.section, event.input.setting
        obj = self.wb.bench if section == "bench" else self.wb.eval
        self.post_message(self.Changed(section, name, coerce_setting(obj, name, event.value)))

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        if event.value is not Select.BLANK:
            self.post_message(self.Changed("ui", "device", event.value))

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        event.stop()
        self.post_message(self.Changed("ui", "save_artifact", event.value))

    def sync(self) -> None:
        self.query_one("#set-device", Select).value = self.wb.device
        self.query_one("#set-budget", Input).value = f"{self.wb.budget_pct:g}"
        self.query_one("#set-artifact", Checkbox).value = self.wb.save_artifact
        for section, obj in (("bench", self.wb.bench), ("eval", self.wb.eval)):
            for name, _kind, value in setting_fields(obj):
                self.query_one(f"#set-{section}-{name}", Input).value = "" if value is None else str(value)
