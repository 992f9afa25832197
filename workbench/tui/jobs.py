"""The UI's handle on a core job: which kind it is, what it belongs to, and what it has said so far.

Jobs run in their own process (``workbench.core.jobs``); the app polls them from a timer, never blocks on them, and
cancels them from a thread (cancel waits up to the grace period for the process to go).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workbench.core.jobs.client import Job


@dataclass
class JobHandle:
    kind: str  # "run", "inspect", "verify"
    spec: dict
    session: Any = None  # run: the Session its results autosave into
    recipe: Any = None  # run: the validated Recipe
    job: Job | None = None
    error: dict | None = None
    final: dict | None = None
    ok: bool | None = None  # set by the ``done`` event
    cancelling: bool = False
    events_seen: int = 0
    extra: dict = field(default_factory=dict)

    def start(self) -> "JobHandle":
        self.job = Job(self.spec)
        return self

    @property
    def finished(self) -> bool:
        return self.job is not None and self.job.finished

    @property
    def active(self) -> bool:
        return self.job is not None and not self.job.finished

    def poll(self) -> list[dict]:
        if self.job is None:
            return []
        events = self.job.poll()
        self.events_seen += len(events)
        return events

    def cancel(self) -> None:
        """Blocking (up to ~2 s): call it from a thread worker."""
        self.cancelling = True
        if self.job is not None:
            self.job.cancel()
