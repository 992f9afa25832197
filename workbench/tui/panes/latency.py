"""Latency pane: a histogram of the timed calls, baseline and optimized overlaid on the same bins, with p50/p90/p99
marked; for causal LMs time-to-first-token and per-token decode are shown separately (table, and selectable plot).
Raw samples arrive with the final result; mid-run, the baseline's percentiles are marked as soon as they are known.
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Select, Static
from textual_plotext import PlotextPlot

from workbench.tui import fmt

METRICS = (("latency_ms", "end-to-end latency per call"), ("ttft_ms", "time to first token"),
           ("decode_ms_per_token", "decode time per token"))
COLORS = {"baseline": "blue", "optimized": "orange"}  # plotext colour names
STYLES = {"baseline": "blue", "optimized": "dark_orange"}  # rich styles
BINS = 24


def histogram(series: dict[str, list[float]], bins: int = BINS) -> tuple[list[float], dict[str, list[int]]]:
    """Counts of every series over one shared set of bins (so overlaid shapes are comparable)."""
    values = [v for xs in series.values() for v in xs]
    if not values:
        return [], {}
    lo, hi = min(values), max(values)
    if hi <= lo:
        hi = lo + max(abs(lo) * 1e-3, 1e-6)
    width = (hi - lo) / bins
    centers = [lo + (i + 0.5) * width for i in range(bins)]
    counts = {}
    for name, xs in series.items():
        c = [0] * bins
        for v in xs:
            c[min(bins - 1, int((v - lo) / width))] += 1
        counts[name] = c
    return centers, counts


class LatencyPane(Vertical):
    BORDER_TITLE = "Latency"

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.phases: dict[str, dict] = {}  # "baseline" / "optimized" -> phase report
        self.metric = "latency_ms"

    def compose(self) -> ComposeResult:
        yield Select([(label, key) for key, label in METRICS], value="latency_ms", allow_blank=False, compact=True,
                     id="lat-metric")
        yield PlotextPlot(id="lat-plot")
        yield Static(id="lat-table")

    def on_mount(self) -> None:
        self.redraw()

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        if event.value is not Select.BLANK:
            self.metric = str(event.value)
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
        self._plot()
        self.query_one("#lat-table", Static).update(self._table())

    def _plot(self) -> None:
        widget = self.query_one("#lat-plot", PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        plt.clear_figure()
        label = dict(METRICS)[self.metric]
        stats = {name: (ph.get(self.metric) or {}) for name, ph in self.phases.items()}
        samples = {name: st.get("samples") or [] for name, st in stats.items() if st.get("samples")}
        if not any(stats.values()):
            plt.title(f"{label}: no measurement yet" if self.phases or self.metric == "latency_ms"
                      else f"{label}: not measured for this model")
        else:
            centers, counts = histogram(samples)
            for name, c in counts.items():
                plt.plot(centers, c, label=name, color=COLORS[name], marker="braille")
            for name, st in stats.items():
                for q in ("p50", "p90", "p99"):
                    if st.get(q) is not None:
                        plt.vline(st[q], COLORS[name])
            title = f"{label} (ms): lines mark p50 p90 p99"
            if not samples:
                title += " · histogram with the final result"
            plt.title(title)
            plt.xlabel("ms")
            plt.ylabel("calls")
            xs = [v for s in samples.values() for v in s] + \
                 [st[q] for st in stats.values() for q in ("p50", "p99") if st.get(q) is not None]
            if xs:
                lo, hi = min(xs), max(xs)
                pad = (hi - lo) * 0.05 or max(abs(lo) * 0.05, 1e-3)
                plt.xlim(lo - pad, hi + pad)
                ticks = [lo + (hi - lo) * i / 4 for i in range(5)] if hi > lo else [lo]
                plt.xticks(ticks, [f"{t:.3g}" for t in ticks])
        widget.refresh()

    def _table(self) -> Table | Text:
        if not self.phases:
            return Text("Run to measure: baseline and optimized calls are timed side by side.", style="dim")
        t = Table(box=None, padding=(0, 1), expand=False, show_edge=False)
        t.add_column("")
        for name in self.phases:
            t.add_column(f"{name} p50", justify="right", style=STYLES[name])
            t.add_column("p90", justify="right")
            t.add_column("p99", justify="right")
        for key, label in METRICS:
            cells = []
            for ph in self.phases.values():
                st = ph.get(key) or {}
                cells += [fmt.num(st.get("p50")), fmt.num(st.get("p90")), fmt.num(st.get("p99"))]
            if any(c != fmt.NA for c in cells):
                t.add_row({"latency_ms": "call ms", "ttft_ms": "TTFT ms", "decode_ms_per_token": "decode ms/tok"}[key],
                          *cells)
        return t
