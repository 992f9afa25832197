"""The one apply loop: a recipe's (validated) optimization steps applied in order to a loaded model.

``optbench run`` (pipeline.py), the batch sweep (sweep.py) and every tune trial (tune/worker.py) call
``apply_steps``; each passes its own callbacks, so its events and logs stay its own. Torch-free at import.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from workbench.core import optimizations
from workbench.core.optimizations.context import ApplyContext


def unpack_applied(result: Any) -> tuple[Any, dict]:
    """(replacement model or None, report) from what an optimization's apply returned: an ``Applied(model, report)``
    object, or a report dict that may carry the new module under ``"_model"`` (a student, a compiled wrapper), or
    None (the model was changed in place and there is nothing to report)."""
    if result is None:
        return None, {}
    if hasattr(result, "model") and hasattr(result, "report"):
        return result.model, dict(result.report or {})
    model = result.pop("_model", None)
    return model, result


def apply_steps(loaded, steps, *, eval_settings=None, log: Callable[[str], None] | None = None,
                warn: Callable[[str], None] | None = None,
                on_step: Callable[[str, float], None] | None = None,
                on_progress: Callable[..., None] | None = None,
                on_applied: Callable[[dict], None] | None = None) -> list[dict]:
    """Apply ``steps`` (``OptStep``s whose params a ``Recipe.validate`` resolved) to ``loaded.model`` in order.

    A step that returns a new module replaces ``loaded.model``. Returns one report per step: {name, params, seconds,
    exportable, ... what the optimization reported}. Callbacks: ``on_step(name, fraction of the steps done)`` before
    a step, ``on_progress(name, fraction, **extra)`` from inside it, ``on_applied(report)`` after it; ``log`` and
    ``warn`` reach the optimization through its ``ApplyContext``."""
    reports = []
    for i, step in enumerate(steps):
        spec = optimizations.get(step.name)
        if on_step is not None:
            on_step(spec.name, i / max(1, len(steps)))
        extra: dict[str, Any] = {}
        if log is not None:
            extra["log"] = log
        if on_progress is not None:
            extra["progress"] = lambda f, n=spec.name, **kw: on_progress(n, f, **kw)
        ctx = ApplyContext(device=loaded.device, task=loaded.task, tokenizer=loaded.tokenizer, warn=warn,
                           eval_settings=eval_settings, **extra)
        ctx.extra["generate_kwargs"] = loaded.generate_kwargs
        t0 = time.perf_counter()
        new_model, rep = unpack_applied(spec.apply(loaded.model, step.params, ctx))
        if new_model is not None:
            loaded.model = new_model
        report = {"name": spec.name, "params": step.params, "seconds": time.perf_counter() - t0,
                  "exportable": spec.exportable, **rep}
        reports.append(report)
        if on_applied is not None:
            on_applied(report)
    return reports
