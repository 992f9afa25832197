"""The parent side of a job: start the child, stream its events, cancel it. Torch-free.

A job that dies without saying so (killed, segfault, out-of-memory killer) still ends with an ``error`` event
and a ``done`` event synthesized here, so a front end has one code path for every ending.

A tensor-parallel job (core/parallel/launch.py) is torchrun and its N ranks; it is still one ``Job``: rank 0's events,
every rank's stderr, one error event when a rank fails, and cancel ends torchrun and every rank.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Iterator

from workbench.core.jobs.protocol import decode, encode
from workbench.core.parallel import launch

_SIGNALS = {signal.SIGKILL: "SIGKILL", signal.SIGTERM: "SIGTERM", signal.SIGSEGV: "SIGSEGV",
            signal.SIGABRT: "SIGABRT", signal.SIGBUS: "SIGBUS"}


class Job:
    """One job process: ``python -m MODULE`` (``workbench.core.jobs.child``; tests name their own, which adds job
    kinds to the child's ``JOBS``) reading ``spec`` on stdin; under torchrun with one process per rank when the spec
    asks for a tensor-parallel degree (``launch.degree``)."""

    def __init__(self, spec: dict, env: dict | None = None, module: str = "workbench.core.jobs.child") -> None:
        self.spec = spec
        self.events_q: queue.Queue = queue.Queue()
        self.stderr_tail: deque[str] = deque(maxlen=60)
        self.cancelled = False
        self.finished = False
        self._saw_done = False
        self._saw_error = False
        self.tp = launch.degree(spec)
        self._watch = launch.RankWatch(self.tp) if self.tp else None
        self._spec_file = None
        cmd, extra = [sys.executable, "-m", module], {}
        if self.tp:
            cmd, extra, self._spec_file = launch.prepare(spec, module, self.tp)
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra, **(env or {})}
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL if self.tp else subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True, env=full_env, text=True, encoding="utf-8",
            errors="replace", bufsize=1,
        )
        if not self.tp:
            self.proc.stdin.write(json.dumps(spec))
            self.proc.stdin.close()
        self._out_thread = threading.Thread(target=self._read_stdout, daemon=True)
        self._err_thread = threading.Thread(target=self._read_stderr, daemon=True)
        self._out_thread.start()
        self._err_thread.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            event = decode(line)
            if event is None:
                continue
            if event["type"] == "done":
                self._saw_done = True
            elif event["type"] == "error":
                self._saw_error = True
            self.events_q.put(event)
        self.proc.wait()
        if self._spec_file:
            try:
                os.unlink(self._spec_file)
            except OSError:
                pass
        if not self._saw_done:
            self._err_thread.join(timeout=1)
            if not self._saw_error:
                self.events_q.put(self._death_event())
            self.events_q.put(json.loads(encode("done", ok=False)))
        self.events_q.put(None)  # end of stream

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr_tail.append(line.rstrip("\n"))
            if self._watch is not None:
                self._watch.feed(line)

    def _death_event(self) -> dict:
        code = self.proc.returncode
        if self.cancelled:
            return json.loads(encode("error", kind="cancelled", message="the job was cancelled", hint="",
                                     param=None))
        if self._watch is not None:  # a tensor-parallel job: which rank failed first, and how
            return json.loads(encode("error", **self._watch.error_event(code, list(self.stderr_tail))))
        if code is not None and code < 0:
            sig = _SIGNALS.get(-code, f"signal {-code}")
            if -code == signal.SIGKILL:
                msg = "the job process was killed (SIGKILL), most likely by the operating system's " \
                      "out-of-memory killer"
                hint = "use a smaller model, batch or sequence length, or free memory; nothing was saved " \
                       "from this run"
            else:
                msg = f"the job process died ({sig})"
                hint = "see the job log (stderr tail) for the last thing it printed"
            return json.loads(encode("error", kind="killed", message=msg, hint=hint, param=None))
        tail = " | ".join(list(self.stderr_tail)[-3:])[:400]
        return json.loads(encode("error", kind="crashed",
                                 message=f"the job process exited with code {code} without a result",
                                 hint=f"last output: {tail}" if tail else "it printed nothing", param=None))

    def events(self, timeout: float | None = None) -> Iterator[dict]:
        """Blocking iterator over events until the stream ends (always ends with a ``done`` event)."""
        while True:
            event = self.events_q.get(timeout=timeout)
            if event is None:
                self.finished = True
                return
            yield event

    def poll(self, limit: int = 1000) -> list[dict]:
        """Non-blocking: the events that arrived since the last call (for a UI timer)."""
        out = []
        while len(out) < limit:
            try:
                event = self.events_q.get_nowait()
            except queue.Empty:
                break
            if event is None:
                self.finished = True
                break
            out.append(event)
        return out

    def signal(self, sig: int, ranks: list[int] | None = None) -> list[int]:
        """Send ``sig`` to the job's process group and, for a tensor-parallel job, to every rank's (torchrun starts
        each rank in its own; ``ranks``: those found before); no waiting, so a signal handler may call it. Returns
        the rank pids it signalled."""
        ranks = sorted(set(ranks or []) | set(launch.rank_pids(self.proc.pid) if self.tp else []))
        for group in [self.proc.pid, *ranks]:
            try:
                os.killpg(group, sig)
            except (ProcessLookupError, PermissionError):
                pass
        return ranks

    def cancel(self, grace: float = 1.5) -> None:
        """SIGTERM the job (``signal``); SIGKILL after ``grace`` seconds. Returns when it is gone."""
        if self.proc.poll() is not None:
            return
        self.cancelled = True
        ranks = self.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if self.proc.poll() is not None and not launch.alive(ranks):
                return
            time.sleep(0.02)
        self.signal(signal.SIGKILL, ranks)
        self.proc.wait(timeout=5)

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout=timeout)
