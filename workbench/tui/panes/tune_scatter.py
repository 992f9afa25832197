"""Tune scatter: every trial as a point of (gain on the objective, share of the accuracy budget used), with the
Pareto frontier drawn as a line through its points, the budget (100 % used) as a horizontal line and the baseline
at (1×, 0 %).

x is the trial's gain over the baseline its worker measured last (> 1 is better: speedup for latency, reduction
for memory and size, ratio for throughput). That is what the core compares trials and builds the frontier on —
raw objective values drift with a shared machine's load, gains do not — so the frontier is a monotone line here.
The raw values are in the table. y is ``budget_used``: the largest drop over its limit among the constrained
metrics (100 % = at the limit, below 0 = better than the baseline).

Markers: ● finished within budget (green), × finished over budget (red), ○ pruned after benchmarking (accuracy
not evaluated: drawn at the top edge, grey), ◆ frontier, ★ the chosen recipe. Failed and not-run trials have no
position; the title counts them. Values above the top are drawn at it (the title says so).
"""

from __future__ import annotations

import math

from textual.app import ComposeResult
from textual.containers import Vertical
from textual_plotext import PlotextPlot

from workbench.tui.tuning import TuneState, trial_kind

COLORS = {"feasible": "green", "over": "red", "pruned": "gray", "frontier": "cyan", "best": "yellow",
          "budget": "red", "baseline": "blue"}
LEGEND = "● within budget  × over  ○ pruned (not evaluated: at the top)  ◆ frontier  ★ chosen  ─ budget"
Y_CAP = 300.0  # % of the budget: higher values are drawn at the top edge


def points(state: TuneState) -> dict[str, list[tuple[float, float]]]:
    """Plot coordinates per series: feasible, over, pruned (y None: accuracy not evaluated), frontier, best."""
    out: dict[str, list] = {"feasible": [], "over": [], "pruned": [], "frontier": [], "best": []}
    for t in state.trials:
        g = t.get("gain")
        if g is None:
            continue
        kind = trial_kind(t)
        used = t.get("budget_used")
        if kind in ("feasible", "over") and used is not None:
            out[kind].append((g, 100.0 * used))
        elif kind == "pruned":
            out["pruned"].append((g, None))
    out["frontier"] = sorted((f["gain"], 100.0 * f["budget_used"]) for f in state.frontier
                             if f.get("gain") is not None and f.get("budget_used") is not None)
    b = state.best
    if b and b.get("gain") is not None and b.get("budget_used") is not None:
        out["best"] = [(b["gain"], 100.0 * b["budget_used"])]
    return out


TITLE = "Trials: accuracy budget used vs gain"


class TuneScatterPane(Vertical):
    BORDER_TITLE = TITLE

    def __init__(self, state: TuneState, **kw) -> None:
        super().__init__(**kw)
        self.state = state
        self.border_subtitle = LEGEND

    def compose(self) -> ComposeResult:
        yield PlotextPlot(id="tune-plot")

    def on_mount(self) -> None:
        self.redraw()

    def redraw(self) -> None:
        widget = self.query_one("#tune-plot", PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        plt.clear_figure()
        st = self.state
        obj = st.objective or {}
        name = obj.get("name", "objective")
        pts = points(st)
        measured = [p for k in ("feasible", "over", "frontier") for p in pts[k]]
        if not measured and not pts["pruned"]:
            plt.title("no trial measured yet" if st.status != "idle" else
                      "start a tune (F5): each trial appears here")
            self.border_title = TITLE
            plt.xlim(0.5, 2.0)
            plt.ylim(-10, 120)
            plt.hline(100.0, COLORS["budget"])
            widget.refresh()
            return
        ys = [y for _, y in measured]
        top = max(120.0, min(Y_CAP, max(ys) * 1.1 if ys else 120.0))
        bottom = min(-10.0, min(ys) * 1.1 if ys else -10.0)
        clipped = any(y > top for y in ys)

        def clip(series):
            return [(x, min(y, top) if y is not None else top) for x, y in series]

        xs_all = [x for k in ("feasible", "over", "pruned", "frontier") for x, _ in pts[k]] + [1.0]
        lo, hi = min(xs_all), max(xs_all)
        pad = max((hi - lo) * 0.08, 0.05)
        plt.xlim(lo - pad, hi + pad)
        plt.ylim(bottom, top)
        step = 50 if top - bottom <= 320 else 100
        yt = [v for v in range(int(math.ceil(bottom / step)) * step, int(top) + 1, step)]
        plt.yticks(yt, [f"{v}%" for v in yt])
        plt.hline(100.0, COLORS["budget"])
        plt.vline(1.0, COLORS["baseline"])
        front = clip(pts["frontier"])
        if len(front) > 1:
            plt.plot([x for x, _ in front], [y for _, y in front], color=COLORS["frontier"], marker="braille")
        for kind, marker in (("pruned", "○"), ("over", "×"), ("feasible", "●"), ("frontier", "◆"), ("best", "★")):
            series = clip(pts[kind])
            if series:
                plt.scatter([x for x, _ in series], [y for _, y in series], marker=marker, color=COLORS[kind])
        c = st.counts()
        unplaced = c.get("failed", 0) + c.get("cancelled", 0)
        notes = []
        if unplaced:
            notes.append(f"{unplaced} failed")
        if c.get("not-run"):
            notes.append(f"{c['not-run']} not run")
        if clipped:
            notes.append(f"capped at {top:.0f}%")
        plt.title(f"↑ % of the accuracy budget ({st.accuracy_text()}) used · → {name} gain ×"[:max(20, self.size.width - 14)])
        self.border_title = TITLE + (f" · {', '.join(notes)}" if notes else "")
        widget.refresh()
