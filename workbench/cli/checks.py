"""Exit codes, the checks made before a job starts (torch-free), and how the CLI prints an error."""

from __future__ import annotations

import json
import sys

from workbench.core.errors import InputError, JobFailed

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def hardware_warning(recipe) -> str | None:
    """bf16 (cast) on a CPU without native bf16 matmuls: said before the run, which still goes ahead."""
    from workbench.core.measure import nvml
    from workbench.core.measure.cpu import precision_warning

    names = [s.name for s in recipe.optimizations if not (s.name == "bf16" and s.params.get("mode") == "autocast")]
    if "bf16" not in names:
        return None  # the only case warned about; no NVML start-up for every other run
    device = recipe.device or "auto"
    if device == "auto":
        device = "cuda" if nvml.devices() else "cpu"
    return precision_warning(names, device)


def check_positive(name: str, value, lo=0.0, hi=None) -> None:
    """``--name value`` within (lo, hi]; None passes. Raises InputError naming the flag."""
    if value is None:
        return
    if value <= lo or (hi is not None and value > hi):
        raise InputError(f"--{name} {value}: out of range; expected a number > {lo}" + (f" and <= {hi}" if hi else ""))


# ---------------------------------------------------------------- errors

def error_text(message: str, param: str | None = None) -> str:
    """An error message in the CLI's words: the core names the parameter (``param="opt"``), the CLI its flag
    (``--opt``). A message that already starts with a flag (older core wording, the CLI's own) is left as it is."""
    if param and not message.startswith("--"):
        return f"--{param.replace('_', '-')} {message}"
    return message


def error_fields(error) -> dict:
    """kind, message (rendered), hint and param of an OptbenchError or of a job ``error`` event."""
    if isinstance(error, dict):
        kind, message = error.get("kind", "exception"), error.get("message", "")
        hint, param = error.get("hint", "") or "", error.get("param")
    else:
        kind, message = getattr(error, "kind", "exception"), getattr(error, "message", str(error))
        hint, param = getattr(error, "hint", "") or "", getattr(error, "param", None)
    return {"kind": kind, "message": error_text(message, param), "hint": hint, "param": param}


def fail(error, as_json: bool = False) -> None:
    """Print an error: one line on stderr (and its hint); with --json also the error document on stdout.
    ``error``: an OptbenchError, a job ``error`` event, or a dict with ``message`` (and ``kind``, ``hint``)."""
    fields = error_fields(error)
    print(f"optbench: error: {fields['message']}", file=sys.stderr)
    if fields["hint"]:
        print(f"hint: {fields['hint']}", file=sys.stderr)
    if as_json:
        print(json.dumps({"ok": False, "error": fields}))


def exit_code(error: dict) -> int:
    """The exit code for a job ``error`` event."""
    return EXIT_INPUT if error.get("kind") == "input" else EXIT_FAILED


def raise_job_error(error: dict):
    """A job ``error`` event raised as the matching OptbenchError (InputError for kind ``input``)."""
    cls = InputError if error.get("kind") == "input" else JobFailed
    raise cls(error["message"], error.get("hint", ""), param=error.get("param"))
