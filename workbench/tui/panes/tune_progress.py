"""Tune progress: the tune's state, the trial running now and its stage, trials run and decided out of the search
space, elapsed time against the budget (the tune's fraction: time or candidates, whichever is further), the best
recipe so far, the worker's CPU and memory, and the tune's log."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import ProgressBar, RichLog, Static

from workbench.tui import fmt
from workbench.tui.panes.progress_log import LEVEL_STYLE
from workbench.tui.tuning import TuneState


def clock(seconds) -> str:
    if seconds is None:
        return fmt.NA
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class TuneProgressPane(Vertical):
    BORDER_TITLE = "Progress"

    def __init__(self, state: TuneState, **kw) -> None:
        super().__init__(**kw)
        self.state = state
        self.logged = 0  # log lines of the state already written

    def compose(self) -> ComposeResult:
        yield Static(id="tune-status")
        yield ProgressBar(total=1.0, show_eta=False, id="tune-bar")
        yield Static(id="tune-counts")
        yield RichLog(id="tune-log", max_lines=400, wrap=True, markup=False, highlight=False, min_width=20)

    def on_mount(self) -> None:
        self.redraw()

    def reset_log(self) -> None:
        self.query_one("#tune-log", RichLog).clear()
        self.logged = 0

    def write_log(self) -> None:
        log = self.query_one("#tune-log", RichLog)
        lines = list(self.state.log)
        if self.logged > len(lines):  # a new tune's state
            log.clear()
            self.logged = 0
        for level, text in lines[self.logged:]:
            log.write(Text(text, style=LEVEL_STYLE.get(level, "")))
        self.logged = len(lines)

    def redraw(self, now: float | None = None) -> None:
        st = self.state
        p = st.progress
        stage = p.get("stage") or ""
        sf = p.get("stage_fraction")
        status = {
            "idle": Text("Idle. Set the objective and budget, then F5 starts the tune.", style="dim"),
            "starting": Text.assemble(("▶ ", "cyan"), ("starting: the worker inspects the model…", "bold")),
            "running": Text.assemble(("▶ ", "cyan"), (stage or "running", "bold"),
                                     f"  {sf * 100:3.0f}%" if isinstance(sf, (int, float)) else ""),
            "done": Text.assemble(("✓ finished", "bold green"), (f" ({stage.replace('stopped: ', '')})"
                                                                 if stage else "", "dim")),
            "cancelled": Text("■ cancelled", style="bold yellow"),
            "failed": Text.assemble(("✗ failed", "bold red"), (f": {st.error}" if st.error else "", "red")),
        }.get(st.status, Text(st.status))
        if st.current and st.status == "running":
            status.append(f"\ntrial {st.current.get('id')}: {st.current.get('label')}", style="cyan")
        self.query_one("#tune-status", Static).update(status)
        self.query_one("#tune-bar", ProgressBar).update(progress=float(p.get("fraction") or 0.0)
                                                        if st.status != "done" else 1.0)
        self.query_one("#tune-counts", Static).update(self._counts(now))
        self.write_log()

    def _counts(self, now: float | None) -> Text:
        st = self.state
        p = st.progress
        c = st.counts()
        size = st.space.get("size")
        out = Text()
        out.append("trials ", style="bold")
        out.append(f"{p.get('trials_run', 0) or 0} run · {p.get('trials_decided', len(st.trials)) or 0}"
                   f"{f' of {size}' if size is not None else ''} decided")
        parts = [f"{c[k]} {w}" for k, w in (("feasible", "within budget"), ("over", "over"), ("pruned", "pruned"),
                                            ("failed", "failed")) if c.get(k)]
        if parts:
            out.append(f" ({', '.join(parts)})", style="dim")
        out.append("\ntime ", style="bold")
        out.append(f"{clock(st.elapsed(now))} / {clock(st.budget_s)}")
        if st.objective:
            out.append(f" · objective {st.objective.get('name')} ({st.objective.get('unit')})", style="dim")
        out.append("\nbest ", style="bold")
        if st.best:
            out.append(st.best.get("label", "?"), style="bold cyan")
            out.append(f" {fmt.ratio(st.best.get('gain'))} · {fmt.sig(st.best.get('objective'), 4)} "
                       f"{(st.objective or {}).get('unit', '')}")
            if st.saved_in:
                out.append(f"\nsaved in session {st.saved_in}", style="green")
        elif st.status in ("done", "cancelled"):
            out.append("no recipe meets the budget and improves on the baseline", style="yellow")
        else:
            out.append("none yet", style="dim")
        s = st.sample
        if s and st.active:
            out.append("\nworker ", style="bold")
            out.append(f"CPU {fmt.num(s.get('cpu_percent'), 0)} % · RSS {fmt.mb(s.get('rss_mb'))}", style="dim")
        return out
