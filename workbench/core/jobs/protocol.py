"""The event protocol: one JSON object per line, each with ``type`` and ``t`` (unix seconds).

Types: progress {stage, fraction, and for a bench stage calls, seconds_per_call, eta_s}; log {level, text}; sample {monitor reading}; model {detected model info};
result {phase, report}; error {kind, message, hint, param}; done {ok}. Torch-free.

An ``error`` event's ``param`` is the user-facing parameter the error is about, in the core's words ("model",
"device", "opt", "budget", ...; ``OptbenchError.param``), or null when it is about none (an exception, out of
memory, a killed job). The message does not name a front end's flag or field: each front end renders ``param``
its own way (the CLI as ``--model``, the TUI as the field's label).
"""

from __future__ import annotations

import json
import math
import time

TYPES = ("progress", "log", "sample", "model", "result", "error", "done")


def clean(obj):
    """``obj`` as an event carries it: non-finite floats as None, keys as strings, tuples as lists, tensors' and
    numpy scalars' ``item()``."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        return clean(obj.item())
    return obj


def encode(type_: str, **payload) -> str:
    if type_ not in TYPES:
        raise ValueError(f"unknown event type {type_!r}")
    return json.dumps(clean({"type": type_, "t": time.time(), **payload}), allow_nan=False, default=str)


def decode(line: str) -> dict | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("type") not in TYPES:
        return None
    return event


PACE_KEYS = ("calls", "seconds_per_call", "eta_s")  # a progress event's pace (a bench stage sends them)


def pace_text(event: dict) -> str:
    """"7 calls · 1.24 s/call · ~9 s left" from a progress event ("" when it says nothing about its pace)."""
    parts = []
    calls = event.get("calls")
    if calls is not None:
        parts.append(f"{calls} call{'s' if calls != 1 else ''}")
    spc = event.get("seconds_per_call")
    if spc is not None:
        parts.append(f"{spc * 1000:.0f} ms/call" if spc < 1 else f"{spc:.2f} s/call")
    eta = event.get("eta_s")
    if eta is not None:
        parts.append(f"~{eta:.0f} s left" if eta >= 1 else "<1 s left")
    return " · ".join(parts)
