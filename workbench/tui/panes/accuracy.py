"""Accuracy pane: each metric's value, baseline and delta, coloured by whether the change is within the user's
accuracy budget (green: no loss, yellow: a loss within budget, red: over budget)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from workbench.tui import fmt


class AccuracyPane(Vertical):
    BORDER_TITLE = "Accuracy vs baseline"

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.accuracy: dict = {}
        self.baseline_metrics: dict = {}
        self.cached = False
        self.budget_pct = 1.0

    def compose(self) -> ComposeResult:
        yield Static(id="acc-note")
        yield DataTable(id="acc-table", cursor_type="row", zebra_stripes=False)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("metric", "base", "opt", "Δ", "Δ %", "budget")
        self.redraw()

    def clear(self) -> None:
        self.accuracy, self.baseline_metrics, self.cached = {}, {}, False
        self.redraw()

    def set_budget(self, pct: float) -> None:
        self.budget_pct = pct
        self.redraw()

    def set_baseline(self, phase: dict) -> None:
        self.baseline_metrics = dict(phase.get("metrics") or {})
        self.cached = bool(phase.get("accuracy_cached"))
        self.accuracy = {}
        self.redraw()

    def set_report(self, report: dict) -> None:
        self.accuracy = dict(report.get("accuracy") or {})
        self.baseline_metrics = dict((report.get("baseline") or {}).get("metrics") or {})
        self.cached = bool((report.get("baseline") or {}).get("accuracy_cached"))
        self.redraw()

    def statuses(self) -> dict[str, str]:
        return {name: fmt.budget_status(entry, self.budget_pct) for name, entry in self.accuracy.items()}

    def redraw(self) -> None:
        table = self.query_one(DataTable)
        table.clear()
        note = self.query_one("#acc-note", Static)
        if self.accuracy:
            for name, e in self.accuracy.items():
                status = fmt.budget_status(e, self.budget_pct)
                style = fmt.STATUS_STYLE[status]
                delta, base = e.get("delta"), e.get("baseline")
                rel = f"{delta / abs(base) * 100:+.2f}%" if delta is not None and base else fmt.NA
                arrow = "↑" if e.get("higher_is_better", True) else "↓"
                table.add_row(f"{name} {arrow}", fmt.sig(e.get("baseline")), fmt.sig(e.get("value")),
                              Text(fmt.signed(e.get("delta"), 3), style=style), Text(rel, style=style),
                              Text(fmt.STATUS_WORD[status], style=style), key=name)
            over = [n for n, s in self.statuses().items() if s == "over"]
            verdict = Text(f"over the {self.budget_pct:g}% budget: {', '.join(over)}", style="bold red") if over \
                else Text(f"every metric within the {self.budget_pct:g}% budget", style="green")
            if self.cached:
                verdict.append("  (baseline accuracy from cache)", style="dim")
            note.update(verdict)
        elif self.baseline_metrics:
            for name, value in self.baseline_metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    table.add_row(name, fmt.sig(value), "…", "", "", "", key=name)
            note.update(Text("baseline measured; the optimized model is next", style="dim"))
        else:
            note.update(Text(f"No results yet. Budget: a metric may get at most {self.budget_pct:g}% worse.",
                             style="dim"))
