"""Tune's events: their types (payloads in docs/tune.md, "Events") and the JSON form every payload takes."""

from __future__ import annotations

import json
from typing import Callable

from workbench.core.jobs import protocol

Emit = Callable[..., None]
EVENT_TYPES = ("tune-start", "trial-start", "trial", "frontier", "progress", "log", "sample", "result")


def jsonable(obj):
    """``obj`` as the job protocol would send it: non-finite floats as None, tensors' items as numbers."""
    return json.loads(json.dumps(protocol.clean(obj), allow_nan=False, default=str))
