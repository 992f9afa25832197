"""Shared helpers for the TUI tests."""

from __future__ import annotations

import json
import time
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def canned_report() -> dict:
    """A real final report of tiny-llama + int8-dynamic (fast settings), paths and times made neutral."""
    return json.loads((FIXTURES / "report_llama.json").read_text())


def fast_app(**kw):
    """The app with the test suite's fast bench/eval settings on CPU."""
    from tests.conftest import fast_recipe
    from workbench.tui.app import OptbenchApp

    r = fast_recipe("unused")
    kw.setdefault("bench", r.bench)
    kw.setdefault("eval", r.eval)
    kw.setdefault("device", "cpu")
    return OptbenchApp(**kw)


async def wait_for(pilot, cond, timeout: float = 60.0, step: float = 0.1, what="condition") -> float:
    """Pump the app until ``cond()`` is true; returns the seconds it took. Fails the test on timeout, naming ``what``
    (a string, or a callable giving one then, e.g. the screen as it is at the end)."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what() if callable(what) else what}")
        await pilot.pause(step)
    return time.monotonic() - t0


def screen_text(app) -> str:
    """The current screen as plain text (what a user would read)."""
    strips = app.screen._compositor.render_strips()
    return "\n".join("".join(seg.text for seg in strip) for strip in strips)


class PtyApp:
    """``python -m workbench --model REF`` in a real pseudo-terminal (100×30), for signal and hang-up tests.

    ``pump(s)`` reads the screen output for s seconds into ``output``; ``wait_for(text, deadline)`` pumps until the
    text appears; ``close()`` kills whatever is left and closes the terminal."""

    def __init__(self, model: str, env: dict) -> None:
        import fcntl
        import os
        import struct
        import subprocess
        import sys
        import termios

        from tests.conftest import ROOT

        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        self.proc = subprocess.Popen([sys.executable, "-m", "workbench", "--model", model], stdin=slave,
                                     stdout=slave, stderr=slave, env={**env, "TERM": "xterm-256color"}, cwd=ROOT,
                                     start_new_session=True)
        os.close(slave)
        self.output = b""

    def pump(self, seconds: float) -> None:
        import os
        import select

        end = time.monotonic() + seconds
        while time.monotonic() < end:
            r, _, _ = select.select([self.master], [], [], 0.05)
            if r:
                try:
                    self.output += os.read(self.master, 65536)
                except OSError:
                    return

    def wait_for(self, text: bytes, deadline: float) -> None:
        while text not in self.output and time.monotonic() < deadline:
            self.pump(0.2)

    def wait_exit(self, timeout: float) -> int | None:
        """Read the screen (as a live terminal does) until the app exits or ``timeout`` s pass; its return code."""
        end = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < end:
            self.pump(0.1)
        return self.proc.poll()

    def write(self, data: bytes) -> None:
        import os

        os.write(self.master, data)

    def close(self) -> None:
        import os
        import signal

        import psutil

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        for k in psutil.Process().children(recursive=True):
            k.kill()
        os.close(self.master)
