"""Error types shared by the engine, the job process and the front ends."""

from __future__ import annotations


class OptbenchError(Exception):
    """Base class. ``kind`` travels in job ``error`` events; ``hint`` tells the user what to do."""

    kind = "exception"
    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class InputError(OptbenchError):
    """Bad user input: a model that is not there, a parameter out of range, a corrupt file. Exit code 2."""

    kind = "input"
    exit_code = 2


class SessionError(InputError):
    """A session that cannot be read or a session name that is not allowed."""

    kind = "input"


class JobFailed(OptbenchError):
    """The job process failed (exception, out of memory, killed)."""

    kind = "job"
    exit_code = 1
