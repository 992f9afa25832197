"""Stage progress of a job on stderr (rich, imported only when shown)."""

from __future__ import annotations

import sys


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
                                         console=Console(stderr=True), transient=True)
            self.progress.start()
            self.task = self.progress.add_task("starting", total=1.0)

    def update(self, stage: str, fraction: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=stage, completed=fraction)

    def log(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(f"[yellow]{text}[/]")
        else:
            print(text, file=sys.stderr)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
