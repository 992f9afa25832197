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


async def wait_for(pilot, cond, timeout: float = 60.0, step: float = 0.1, what: str = "condition") -> float:
    """Pump the app until ``cond()`` is true; returns the seconds it took. Fails the test on timeout."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await pilot.pause(step)
    return time.monotonic() - t0


def screen_text(app) -> str:
    """The current screen as plain text (what a user would read)."""
    strips = app.screen._compositor.render_strips()
    return "\n".join("".join(seg.text for seg in strip) for strip in strips)
