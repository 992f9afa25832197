"""Tune table: one row per trial (or only the Pareto frontier, baseline included) with its status, recipe, objective
value, gain, worst accuracy change, share of the budget used and whether it meets the constraints; ★ marks the
chosen recipe and ◆ the frontier. The highlighted row's reason (why pruned, why over budget, the error) shows
below. Views (f cycles): trials that ran or came from the cache · the frontier · everything, including the
combinations not run because of their parts' results."""

from __future__ import annotations

import re

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from workbench.tui import fmt
from workbench.tui.tuning import TuneState, short_metric, trial_kind, worst_metric

VIEWS = ("tried", "frontier", "all")
VIEW_TITLES = {"tried": "trials run or cached", "frontier": "Pareto frontier", "all": "every decided candidate"}
KIND_STYLE = {"feasible": "green", "over": "red", "pruned": "dim", "not-run": "dim italic", "failed": "bold red",
              "cancelled": "yellow"}
KIND_WORD = {"feasible": "ok", "over": "over", "pruned": "pruned", "not-run": "not run", "failed": "failed",
             "cancelled": "cancelled"}


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def compact_label(label: str) -> str:
    """``prune-l1:sparsity=0.5 + bf16:mode=cast`` -> ``prune-l1:0.5 + bf16:cast`` (the full label is in the detail)."""
    return re.sub(r"(?<=[:,])[A-Za-z_]+=", "", label)


def accuracy_cell(trial: dict) -> Text:
    w = worst_metric(trial)
    if w is None:
        return Text(fmt.NA, style="dim")
    metric, row = w
    rel = row.get("drop_relative")
    if rel is not None:  # the change relative to the baseline, signed like the metric (ppl +0.6%, agree -3.1%)
        text = f"{short_metric(metric)} {-rel * 100 if row.get('higher_is_better', True) else rel * 100:+.1f}%"
    else:
        text = f"{short_metric(metric)} {fmt.signed(row.get('delta'), 2)}"
    return Text(text, style="green" if row.get("ok", True) else "red")


class TuneTablePane(Vertical):
    BORDER_TITLE = "Trials"

    def __init__(self, state: TuneState, **kw) -> None:
        super().__init__(**kw)
        self.state = state
        self.view = "tried"
        self.shown: list[dict] = []

    def compose(self) -> ComposeResult:
        yield DataTable(id="tune-table", cursor_type="row", zebra_stripes=True)
        yield Static(id="tune-detail")

    def on_mount(self) -> None:
        self.redraw()

    def _columns(self) -> None:
        table = self.query_one(DataTable)
        table.clear(columns=True)
        unit = (self.state.objective or {}).get("unit", "objective")
        for label, key in (("", "mark"), ("#", "id"), ("status", "status"), ("recipe", "recipe"), (unit, "value"),
                           ("gain", "gain"), ("worst Δ", "acc"), ("used", "used")):
            table.add_column(label, key=key)

    def cycle_view(self) -> str:
        self.view = VIEWS[(VIEWS.index(self.view) + 1) % len(VIEWS)]
        self.redraw()
        return self.view

    def rows(self) -> list[dict]:
        st = self.state
        if self.view == "frontier":
            return list(st.frontier)
        if self.view == "tried":
            return [t for t in st.trials if trial_kind(t) != "not-run"]
        return list(st.trials)

    def redraw(self) -> None:
        st = self.state
        table = self.query_one(DataTable)
        keep = table.cursor_row if table.row_count else 0
        self._columns()  # afresh: a DataTable's columns keep the widest cell they ever held
        front, best_id = st.frontier_ids(), (st.best or {}).get("id")
        self.shown = self.rows()
        rows = []
        for t in self.shown:
            baseline = bool(t.get("baseline"))
            kind = "feasible" if baseline else trial_kind(t)
            mark = "★" if t.get("id") == best_id and not baseline else ("◆" if t.get("id") in front else "")
            used = t.get("budget_used")
            status = "baseline" if baseline else KIND_WORD.get(kind, kind) + (" (cache)" if t.get("cached") else "")
            rows.append([
                Text(mark, style="bold yellow" if mark == "★" else "cyan"),
                Text("-" if baseline else str(t.get("id"))),
                Text(status, style=KIND_STYLE.get(kind, "") if not baseline else "bold"),
                compact_label(t.get("label") or ""),
                Text(fmt.sig(t.get("objective"), 4)),
                Text(fmt.ratio(t.get("gain")), style="bold green" if (t.get("gain") or 0) > 1.0 and not baseline
                     else ""),
                accuracy_cell(t) if not baseline else Text("0", style="dim"),
                Text(fmt.NA if used is None else f"{used * 100:.0f}%"),
            ])
        width = self._recipe_width(rows)
        for t, cells in zip(self.shown, rows):
            cells[3] = clip(cells[3], width)
            table.add_row(*cells, key=f"{'b' if t.get('baseline') else 't'}{t.get('id')}")
        if table.row_count:
            table.move_cursor(row=min(keep, table.row_count - 1))
        c = st.counts()
        self.border_title = f"Trials · {VIEW_TITLES[self.view]} ({len(self.shown)}) · f cycles the view"
        sub = []
        if c.get("not-run") and self.view == "tried":
            n = c["not-run"]
            sub.append(f"{n} combination{'s' if n != 1 else ''} not run (their parts' results)")
        if c.get("cached"):
            sub.append(f"{c['cached']} from the cache")
        self.border_subtitle = " · ".join(sub)
        self.show_detail()

    def _recipe_width(self, rows: list[list]) -> int:
        """What is left for the recipe column once the others have their widest cell (each column pads 1 + 1)."""
        table = self.query_one(DataTable)
        inner = (table.size.width or max(0, self.size.width - 4)) - 2  # a vertical scrollbar may take two
        others = 0
        for i, col in enumerate(table.ordered_columns):
            if i == 3:
                continue
            cells = [r[i].cell_len for r in rows] + [Text.from_markup(str(col.label)).cell_len
                                                     if not isinstance(col.label, Text) else col.label.cell_len]
            others += max(cells) + 2
        return max(14, inner - others - 1)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        self.show_detail()

    def show_detail(self) -> None:
        detail = self.query_one("#tune-detail", Static)
        table = self.query_one(DataTable)
        if not self.shown or not table.row_count:
            detail.update(Text("Trials appear here as they are decided.", style="dim")
                          if self.state.status != "idle" or not self.state.trials else "")
            return
        t = self.shown[min(table.cursor_row, len(self.shown) - 1)]
        out = Text.assemble((f"{t.get('label')}", "bold cyan"))
        if t.get("baseline"):
            out.append(" — the model as loaded", style="dim")
        accuracy = t.get("accuracy") or {}
        if accuracy:
            parts = []
            for metric, row in accuracy.items():
                allowed = row.get("allowed")
                parts.append(f"{short_metric(metric)} {fmt.sig(row.get('value'))} (Δ {fmt.signed(row.get('delta'), 3)}"
                             + (f", allowed drop {fmt.sig(allowed, 3)}" if allowed is not None else ", unconstrained")
                             + ")")
            out.append("\n" + " · ".join(parts))
        reason = t.get("reason") or ((t.get("error") or {}).get("message"))
        if reason:
            out.append("\n" + str(reason), style="yellow" if t.get("status") != "failed" else "red")
        if t.get("contended"):
            out.append(f"\nother processes used {100 * (t.get('others_cpu') or 0):.0f} % of the CPU during its "
                       f"benchmark: its timing is not trustworthy", style="yellow")
        detail.update(out)

    def highlighted(self) -> dict | None:
        table = self.query_one(DataTable)
        if not self.shown or not table.row_count:
            return None
        return self.shown[min(table.cursor_row, len(self.shown) - 1)]
