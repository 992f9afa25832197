"""Stage progress (loading, baseline, applying each optimization, benchmarking, evaluating, exporting) and the job's
log."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import ProgressBar, RichLog, Static

from workbench.core.jobs.protocol import pace_text

LEVEL_STYLE = {"debug": "dim", "info": "", "warning": "yellow", "error": "bold red"}


def planned_stages(recipe, artifact: bool) -> list[str]:
    """The stages a run of ``recipe`` goes through, named as the job's ``progress`` events name them."""
    stages = ["loading", "baseline: benchmarking", "baseline: evaluating"]
    stages += [f"applying {s.name}" for s in recipe.optimizations]
    if recipe.optimizations:
        stages += ["optimized: benchmarking", "optimized: evaluating"]
    if artifact:
        stages.append("exporting")
    return stages + ["done"]


class ProgressPane(Vertical):
    BORDER_TITLE = "Progress"

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.stages: list[str] = []
        self.current: str | None = None
        self.fraction = 0.0
        self.state = "idle"  # idle, running, done, failed, cancelled
        self.detail: dict = {}

    def compose(self) -> ComposeResult:
        yield Static(id="prog-stage")
        yield ProgressBar(total=1.0, show_eta=False, id="prog-bar")
        yield Static(id="prog-stages")

    def on_mount(self) -> None:
        self.redraw()

    def start(self, stages: list[str]) -> None:
        self.stages, self.current, self.fraction, self.state = list(stages), None, 0.0, "running"
        self.detail = {}
        self.redraw()

    def update(self, stage: str, fraction: float, detail: dict | None = None) -> None:
        """``detail``: what the job says about the stage's pace (a bench: calls, seconds_per_call, eta_s)."""
        if stage not in self.stages:
            # an unplanned stage (a new pipeline step): put it before "done" so the list stays truthful
            self.stages.insert(max(0, len(self.stages) - 1), stage)
        self.current, self.fraction = stage, max(0.0, min(1.0, float(fraction or 0.0)))
        self.detail = detail or {}
        if stage == "done":
            self.state = "done"
        self.redraw()

    def finish(self, state: str) -> None:
        self.state = state
        self.redraw()

    def overall(self) -> float:
        if self.state == "done":
            return 1.0
        if not self.stages or self.current is None:
            return 0.0
        i = self.stages.index(self.current)
        return min(1.0, (i + self.fraction) / max(1, len(self.stages) - 1))

    def redraw(self) -> None:
        label = {"idle": Text("Idle. Press r to run.", style="dim"),
                 "running": Text.assemble(("▶ ", "cyan"), (self.current or "starting the job process…", "bold"),
                                          f"  {self.fraction * 100:3.0f}%", (("  · " + pace_text(self.detail)) if pace_text(self.detail) else "", "dim")),
                 "done": Text("✓ finished", style="bold green"),
                 "failed": Text(f"✗ failed during {self.current or 'start'}", style="bold red"),
                 "cancelled": Text(f"■ cancelled during {self.current or 'start'}", style="bold yellow")}[self.state]
        self.query_one("#prog-stage", Static).update(label)
        self.query_one("#prog-bar", ProgressBar).update(progress=self.overall())
        lines = Text()
        reached = self.stages.index(self.current) if self.current in self.stages else -1
        for i, stage in enumerate(self.stages):
            if stage == "done":
                continue
            if i < reached or self.state == "done":
                mark, style = "✓", "green"
            elif i == reached:
                mark, style = {"failed": ("✗", "bold red"), "cancelled": ("■", "yellow")}.get(
                    self.state, ("▶", "bold cyan"))
            else:
                mark, style = "·", "dim"
            lines.append(f"{mark} {stage}\n", style=style)
        lines.rstrip()
        self.query_one("#prog-stages", Static).update(lines)


class LogPane(Vertical):
    BORDER_TITLE = "Log"

    def compose(self) -> ComposeResult:
        yield RichLog(id="log", max_lines=2000, wrap=True, markup=False, highlight=False, min_width=20)

    def write(self, text: str, level: str = "info") -> None:
        self.query_one(RichLog).write(Text(text, style=LEVEL_STYLE.get(level, "")))

    def clear(self) -> None:
        self.query_one(RichLog).clear()
