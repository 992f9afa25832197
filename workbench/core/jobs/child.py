"""The job process. ``python -m workbench.core.jobs.child`` reads one JSON job spec on stdin and streams events.

Its real stdout is reserved for events: fd 1 is pointed at stderr so that prints from libraries cannot corrupt the
stream. Every failure becomes an ``error`` event with a plain-language message and a hint, then ``done``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import traceback

from workbench.core.errors import OptbenchError, error_fields
from workbench.core.jobs.protocol import encode

_out = None
_lock = threading.Lock()


def emit(type_: str, **payload) -> None:
    line = encode(type_, **payload) + "\n"
    with _lock:
        _out.write(line)
        _out.flush()


def _on_term(signum, frame):
    raise KeyboardInterrupt


def run_job(spec: dict) -> dict | None:
    job = spec.get("job")
    if job == "run":
        from workbench.core import pipeline
        from workbench.core.recipe import Recipe

        recipe = Recipe.from_dict(spec["recipe"])
        return pipeline.run(recipe, emit, artifact_dir=spec.get("artifact_dir"))
    if job == "inspect":
        from workbench.core.models import load

        m = spec["model"]
        loaded = load(m["ref"], m.get("task"), spec.get("device", "cpu"), m.get("trust_remote_code", False))
        info = loaded.info()
        emit("model", **info)
        return info
    if job == "tune-worker":  # long-lived: loads once, runs tune trials sent to it (workbench/core/tune/worker.py)
        from workbench.core.tune.worker import worker

        return worker(spec, emit)
    if job == "verify":
        from workbench.core.export import copy_and_verify

        check = copy_and_verify(spec["src"], spec["out"])
        emit("result", phase="export", report=check)
        return check
    if job == "selftest":  # used by tests of the job machinery itself
        import time

        action = spec.get("action")
        if action == "sleep":
            emit("log", level="info", text="sleeping")
            while True:
                time.sleep(0.05)
        if action == "raise":
            raise ValueError("boom")
        if action == "oom":
            raise MemoryError()
        if action == "print":
            print("noise on stdout that must not break the event stream")
            emit("result", phase="final", report={"ok": True})
            return {"ok": True}
        if action == "exit":
            os._exit(int(spec.get("code", 3)))
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
    raise OptbenchError(f"unknown job {job!r}")


def main() -> int:
    global _out
    event_fd = os.dup(1)
    os.dup2(2, 1)  # stray prints go to stderr
    sys.stdout = sys.stderr
    _out = os.fdopen(event_fd, "w", buffering=1, encoding="utf-8")
    signal.signal(signal.SIGTERM, _on_term)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from workbench.core.quiet import quiet_libraries

    quiet_libraries()  # the stderr tail feeds error hints: keep it to what matters
    ok = False
    try:
        spec = json.loads(sys.stdin.read())
        run_job(spec)
        ok = True
    except BaseException as exc:  # noqa: BLE001 - every failure must become an event
        fields = error_fields(exc)
        if fields["kind"] == "exception":
            emit("log", level="error", text="".join(traceback.format_exception(exc))[-4000:])
        emit("error", **fields)
    emit("done", ok=ok)
    _out.flush()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
