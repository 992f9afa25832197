"""Throughput pane: throughput of each timed call over the run (baseline, then optimized), with each phase's
aggregate as a horizontal line. A call's throughput is its batch divided by its time (decode tokens per second per
call for causal LMs, from the per-token decode time; samples per second for encoders)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static
from textual_plotext import PlotextPlot

from workbench.tui import fmt

COLORS = {"baseline": "blue", "optimized": "orange"}  # plotext colour names
STYLES = {"baseline": "blue", "optimized": "dark_orange"}  # rich styles


def per_call(phase: dict) -> list[float]:
    """Throughput of each timed call, derived from the raw samples the core recorded ([] when there are none)."""
    batch = (phase.get("settings") or {}).get("batch") or 1
    if phase.get("decode_ms_per_token"):
        samples = phase["decode_ms_per_token"].get("samples") or []
    else:
        samples = (phase.get("latency_ms") or {}).get("samples") or []
    return [batch * 1000.0 / s for s in samples if s and s > 0]


class ThroughputPane(Vertical):
    BORDER_TITLE = "Throughput"

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.phases: dict[str, dict] = {}

    def compose(self) -> ComposeResult:
        yield PlotextPlot(id="thr-plot")
        yield Static(id="thr-summary")

    def on_mount(self) -> None:
        self.redraw()

    def clear(self) -> None:
        self.phases = {}
        self.redraw()

    def set_baseline(self, phase: dict) -> None:
        self.phases = {"baseline": phase}
        self.redraw()

    def set_report(self, report: dict) -> None:
        self.phases = {"baseline": report.get("baseline") or {}}
        if report.get("optimizations"):
            self.phases["optimized"] = report.get("optimized") or {}
        self.redraw()

    def redraw(self) -> None:
        widget = self.query_one("#thr-plot", PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        plt.clear_figure()
        unit = next((ph.get("throughput", {}).get("unit") for ph in self.phases.values()
                     if ph.get("throughput")), "")
        start = 1
        for name, ph in self.phases.items():
            calls = per_call(ph)
            agg = (ph.get("throughput") or {}).get("value")
            if calls:
                xs = list(range(start, start + len(calls)))
                plt.plot(xs, calls, label=name, color=COLORS[name], marker="braille")
                if agg is not None:
                    plt.plot([xs[0], xs[-1]], [agg, agg], color=COLORS[name], marker="-")
                start += len(calls)
            elif agg is not None:
                plt.hline(agg, COLORS[name])
        if self.phases:
            plt.title(f"{unit or 'throughput'} per timed call (line: phase aggregate)")
            plt.xlabel("timed call")
        else:
            plt.title("throughput: no measurement yet")
        widget.refresh()
        self.query_one("#thr-summary", Static).update(self._summary(unit))

    def _summary(self, unit: str) -> Text:
        if not self.phases:
            return Text("")
        base = (self.phases.get("baseline", {}).get("throughput") or {}).get("value")
        out = Text.assemble(("baseline ", "bold"), (fmt.num(base, 1), STYLES["baseline"]))
        if "optimized" in self.phases:
            opt = (self.phases["optimized"].get("throughput") or {}).get("value")
            out.append("  →  optimized ", style="bold")
            out.append(fmt.num(opt, 1), style=STYLES["optimized"])
            if base and opt:
                out.append(f"  ({opt / base:.2f}×)", style="bold")
        out.append(f"  {unit}", style="dim")
        return out
