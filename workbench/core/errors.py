"""Error types shared by the engine, the job process and the front ends."""

from __future__ import annotations


class OptbenchError(Exception):
    """Base class. ``kind`` travels in job ``error`` events; ``hint`` tells the user what to do."""

    kind = "exception"
    exit_code = 1

    def __init__(self, message: str, hint: str = "", param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        # The user-facing parameter the error is about ("opt", "device", "batch", "budget", ...), named in the
        # core's own words; each front end renders it (the CLI as ``--opt``, the TUI as the field's label).
        self.param = param


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


def classify(exc: BaseException) -> tuple[str, str, str]:
    """(kind, message, hint) for any exception."""
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else name
    if isinstance(exc, OptbenchError):
        return exc.kind, exc.message, exc.hint
    if name in ("OutOfMemoryError",) or "CUDA out of memory" in str(exc):
        return ("oom", f"the GPU ran out of memory: {text[:200]}",
                "use a smaller batch or sequence length, a lower precision (bf16) or a quantization, "
                "or free the GPU")
    if isinstance(exc, MemoryError) or "DefaultCPUAllocator: not enough memory" in str(exc):
        return ("oom", "the job ran out of CPU memory",
                "use a smaller model, batch or sequence length, or close other programs")
    if isinstance(exc, KeyboardInterrupt):
        return "cancelled", "the job was cancelled", ""
    return ("exception", f"{name}: {text[:300]}",
            "this is a bug or an unsupported model/optimization combination; the log has the traceback")


def error_fields(exc: BaseException) -> dict:
    """What a job ``error`` event (and a failed tune trial) carries for any exception: {kind, message, hint, param};
    ``param`` is the parameter an OptbenchError names (None for any other exception)."""
    kind, message, hint = classify(exc)
    return {"kind": kind, "message": message, "hint": hint, "param": getattr(exc, "param", None)}
