"""Stage progress of a job on stderr (rich, imported only when shown)."""

from __future__ import annotations

import sys

from workbench.core.jobs.protocol import pace_text


class Progress:
    """Stage progress on stderr when it is a terminal (rich); silent otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress = None
        self.task = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

            self.progress = RichProgress(TextColumn("{task.description:<32}"), BarColumn(),
                                         TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                                         TextColumn("[dim]{task.fields[pace]}"),
                                         console=Console(stderr=True), transient=True)
            self.progress.start()
            self.task = self.progress.add_task("starting", total=1.0, pace="")

    def update(self, stage: str, fraction: float, event: dict | None = None) -> None:
        """``event``: the progress event, whose pace (a bench's calls, seconds per call, time left) is shown."""
        if self.progress is not None:
            pace = pace_text(event or {})
            self.progress.update(self.task, description=stage, completed=fraction, pace=pace)

    def log(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(f"[yellow]{text}[/]")
        else:
            print(text, file=sys.stderr)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
