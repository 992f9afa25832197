"""The job process. ``python -m workbench.core.jobs.child`` reads one JSON job spec on stdin and streams events.

Its real stdout is reserved for events: fd 1 is pointed at stderr so that prints from libraries cannot corrupt the
stream. Every failure becomes an ``error`` event with a plain-language message and a hint, then ``done``.

Under torchrun (a tensor-parallel job, core/parallel/launch.py) every rank runs ``main()`` on the spec file: rank 0
writes the events; a failing rank other than 0, or rank 0 failing because a peer is gone, writes its error as one
marker line on stderr and exits, and the job client makes the job's one error event from the ranks' markers.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
import threading
import traceback

from workbench.core.errors import OptbenchError, error_fields
from workbench.core.jobs.protocol import encode
from workbench.core.parallel import launch

_out = None
_lock = threading.Lock()


def emit(type_: str, **payload) -> None:
    line = encode(type_, **payload) + "\n"
    with _lock:
        _out.write(line)
        _out.flush()


def _on_term(signum, frame):
    raise KeyboardInterrupt


def _run(spec: dict) -> dict:
    from workbench.core import pipeline
    from workbench.core.recipe import Recipe

    return pipeline.run(Recipe.from_dict(spec["recipe"]), emit, artifact_dir=spec.get("artifact_dir"))


def _inspect(spec: dict) -> dict:
    from workbench.core.models import load

    m = spec["model"]
    loaded = load(m["ref"], m.get("task"), spec.get("device", "cpu"), m.get("trust_remote_code", False))
    info = loaded.info()
    emit("model", **info)
    return info


def _tune_worker(spec: dict) -> dict:  # long-lived: loads once, runs the trials sent to it (core/tune/worker.py)
    from workbench.core.tune.worker import worker

    return worker(spec, emit)


def _verify(spec: dict) -> dict:
    from workbench.core.export import copy_and_verify

    check = copy_and_verify(spec["src"], spec["out"])
    emit("result", phase="export", report=check)
    return check


# The job kinds, by the spec's ``job``. A program that runs ``main()`` with more kinds (the test suite's job
# machinery tests: tests/fixtures/selftest_jobs.py) adds them here first.
JOBS = {"run": _run, "inspect": _inspect, "tune-worker": _tune_worker, "verify": _verify}


def run_job(spec: dict) -> dict | None:
    job = JOBS.get(spec.get("job"))
    if job is None:
        raise OptbenchError(f"unknown job {spec.get('job')!r}; expected one of: {', '.join(JOBS)}")
    return job(spec)


def main() -> int:
    global _out
    event_fd = os.dup(1)
    os.dup2(2, 1)  # stray prints go to stderr
    sys.stdout = sys.stderr
    rank = None
    if os.environ.get(launch.ENV_TP):  # one rank of a tensor-parallel job
        from workbench.core.parallel import group

        rank = group.rank_setup()
    if rank:  # only rank 0 speaks on the event stream
        os.close(event_fd)
        _out = open(os.devnull, "w", encoding="utf-8")
    else:
        _out = os.fdopen(event_fd, "w", buffering=1, encoding="utf-8")
    if rank is None:
        signal.signal(signal.SIGTERM, _on_term)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from workbench.core.quiet import quiet_libraries

    quiet_libraries()  # the stderr tail feeds error hints: keep it to what matters
    ok = False
    try:
        if rank is None:
            spec = json.loads(sys.stdin.read())
        else:
            with open(os.environ[launch.ENV_SPEC], encoding="utf-8") as fh:
                spec = json.load(fh)
            group.init(group.spec_device(spec))
        run_job(spec)
        if rank is not None:
            group.finish()
        ok = True
    except BaseException as exc:  # noqa: BLE001 - every failure must become an event
        fields = error_fields(exc)
        if rank is not None and (rank != 0 or group.is_peer_loss(exc)):
            traceback.print_exception(exc, file=sys.stderr)
            print(launch.rank_error_line(rank, fields, group.is_peer_loss(exc)), file=sys.stderr, flush=True)
            os._exit(1)  # no teardown of a process group whose peers may be gone
        if fields["kind"] == "exception":
            emit("log", level="error", text="".join(traceback.format_exception(exc))[-4000:])
        emit("error", **fields)
    emit("done", ok=ok)
    _out.flush()
    if rank is not None and not ok:
        os._exit(1)
    return 0 if ok else 1


def exit_now(code: int) -> None:
    """End the job process once ``done`` is out: the exit handlers run (``weakref.finalize`` cleanups such as the CPU
    runtimes' temporary folders among them), then ``os._exit`` skips the interpreter's teardown of every module, which
    with torch and transformers loaded took 0.9-1.3 s on the 2-core EPYC here: a cancel waited that long for a job
    that had already said it was done (and past the client's 1.5 s grace on a loaded machine, it was SIGKILLed)."""
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (_out, sys.stderr, sys.__stderr__):
            try:
                if stream is not None:
                    stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


if __name__ == "__main__":
    exit_now(main())
