"""The bench loop's pace reports and its max_seconds cap (no speed is asserted: only what the loop does)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from workbench.core.jobs.protocol import pace_text
from workbench.core.measure.timing import _loop


@dataclass
class Settings:
    warmup: int = 1
    min_iters: int = 4
    min_seconds: float = 0.0
    max_iters: int = 1000
    max_seconds: float | None = None


def test_progress_reports_calls_pace_and_time_left():
    seen = []
    results, meta = _loop(lambda: {"latency": 1.0}, Settings(min_iters=4),
                          lambda f, **kw: seen.append((f, kw)))
    assert len(results) == 4 and "stopped_early" not in meta
    assert [kw["calls"] for _, kw in seen] == [1, 2, 3, 4]
    assert all(kw["seconds_per_call"] >= 0 and kw["eta_s"] >= 0 for _, kw in seen)
    assert seen[-1][0] == 1.0 and seen[-1][1]["eta_s"] == 0.0  # nothing left once min_iters is reached
    assert pace_text({"calls": 3, "seconds_per_call": 1.5, "eta_s": 9.2}) == "3 calls · 1.50 s/call · ~9 s left"
    assert pace_text({"calls": 1, "seconds_per_call": 0.004, "eta_s": 0.2}) == "1 call · 4 ms/call · <1 s left"
    assert pace_text({}) == ""


def test_max_seconds_ends_the_bench_early_with_what_it_has_and_says_so():
    def slow():
        time.sleep(0.02)
        return {"latency": 20.0}

    results, meta = _loop(slow, Settings(min_iters=100000, min_seconds=3600.0, max_seconds=0.1), None)
    assert 1 <= len(results) < 100000
    assert meta["stopped_early"] == "max_seconds"


def test_max_seconds_still_times_one_call_when_warm_up_used_it_all():
    def slow():
        time.sleep(0.05)
        return {"latency": 50.0}

    results, meta = _loop(slow, Settings(warmup=50, min_iters=10, max_seconds=0.01), None)
    assert len(results) == 1 and meta["warmup_runs"] == 1 and meta["stopped_early"] == "max_seconds"
