"""The UI's handle on a core job: which kind it is, what it belongs to, and what it has said so far.

Jobs run in their own process (``workbench.core.jobs``). ``watch`` runs in a thread worker of the app: it blocks on
the job's event stream and posts what arrives as ``JobEvents`` messages (a batch per wake-up), then ``JobEnded``; the
app handles them with ``@on`` handlers and never blocks on a job. Cancel runs in a thread too (it waits up to the
grace period for the process to go). The job runs at a lower scheduling priority than the UI (``JOB_NICE``): under
a saturated CPU the process the user touches is the UI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

from textual.message import Message

from workbench.core.jobs.client import Job

JOB_NICE = 10  # added to the job's niceness (Linux/macOS); the benchmark harness measures medians, not the UI


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
    extra: dict = field(default_factory=dict)
    module: str = "workbench.core.jobs.child"  # the job program (tests start their own)

    def start(self) -> "JobHandle":
        self.job = Job(self.spec, module=self.module)
        lower_priority(self.job.pid)
        return self

    ended: bool = False  # the app has handled JobEnded: every event of the job has been shown

    @property
    def finished(self) -> bool:
        return self.job is not None and self.ended

    @property
    def active(self) -> bool:
        """Started, and the app has not yet handled its end (so its results may still be on their way)."""
        return self.job is not None and not self.ended

    def poll(self) -> list[dict]:
        """Non-blocking: the events that arrived since the last call (``watch`` is the app's way)."""
        return [] if self.job is None else self.job.poll()

    def watch(self, post: Callable[[Message], Any]) -> None:
        """Blocking, for a thread worker: post every event as it arrives, then ``JobEnded``."""
        if self.job is not None:
            for first in self.job.events():
                post(JobEvents(self, [first, *self.job.poll()]))
                if self.job.finished:  # poll() read the end of the stream
                    break
        post(JobEnded(self))

    def cancel(self) -> None:
        """Blocking (up to ~2 s): call it from a thread worker."""
        self.cancelling = True
        if self.job is not None:
            self.job.cancel()


class JobEvents(Message):
    """Events from one job, in order (what arrived since its last message)."""

    def __init__(self, handle: JobHandle, events: list[dict]) -> None:
        super().__init__()
        self.handle = handle
        self.events = events


class JobEnded(Message):
    """The job's event stream ended (after its ``done``, which the job or the client always sends)."""

    def __init__(self, handle: JobHandle) -> None:
        super().__init__()
        self.handle = handle


def lower_priority(pid: int, by: int = JOB_NICE) -> None:
    """Lower the scheduling priority of a job's whole process group (every thread, and what it starts later)."""
    try:
        os.setpriority(os.PRIO_PGRP, pid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + by))
    except (AttributeError, OSError):  # no setpriority (Windows) or the job is already gone
        pass
