"""The job machinery: events stream, failures become error events, cancel kills within 2 s, parent survives."""

import time

import psutil
import pytest

from tests.fixtures.selftest_jobs import SELFTEST
from workbench.core.jobs.client import Job


def collect(job, timeout=60):
    return list(job.events(timeout=timeout))


def kinds(events):
    return [e["type"] for e in events]


def test_stray_prints_do_not_break_the_stream():
    events = collect(Job({"job": "selftest", "action": "print"}, module=SELFTEST))
    assert kinds(events)[-2:] == ["result", "done"]
    assert events[-1]["ok"] is True


def test_exception_becomes_error_event():
    events = collect(Job({"job": "selftest", "action": "raise"}, module=SELFTEST))
    err = next(e for e in events if e["type"] == "error")
    assert err["kind"] == "exception" and "ValueError: boom" in err["message"] and err["hint"]
    assert any(e["type"] == "log" and "Traceback" in e["text"] for e in events)
    assert events[-1] == {**events[-1], "type": "done", "ok": False}


def test_out_of_memory_is_explained():
    events = collect(Job({"job": "selftest", "action": "oom"}, module=SELFTEST))
    err = next(e for e in events if e["type"] == "error")
    assert err["kind"] == "oom" and "out of CPU memory" in err["message"]


def test_killed_child_is_reported_as_killed():
    events = collect(Job({"job": "selftest", "action": "kill"}, module=SELFTEST))
    err = next(e for e in events if e["type"] == "error")
    assert err["kind"] == "killed" and "SIGKILL" in err["message"] and "out-of-memory" in err["message"]
    assert events[-1]["type"] == "done" and events[-1]["ok"] is False


def test_silent_exit_is_reported():
    events = collect(Job({"job": "selftest", "action": "exit", "code": 3}, module=SELFTEST))
    err = next(e for e in events if e["type"] == "error")
    assert err["kind"] == "crashed" and "code 3" in err["message"]


def test_cancel_removes_the_process_within_two_seconds():
    job = Job({"job": "selftest", "action": "sleep"}, module=SELFTEST)
    first = next(job.events(timeout=30))
    assert first["type"] == "log"
    t0 = time.monotonic()
    job.cancel()
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0
    assert not psutil.pid_exists(job.pid) or psutil.Process(job.pid).status() == psutil.STATUS_ZOMBIE
    rest = collect(job, timeout=10)
    err = next(e for e in rest if e["type"] == "error")
    assert err["kind"] == "cancelled"


def test_cancelled_job_ends_itself_and_its_exit_handlers_run():
    """The child skips the interpreter's teardown (child.exit_now) but not the exit handlers: a folder a
    weakref.finalize removes at exit is gone, and the job ended by its own SIGTERM path, not the client's SIGKILL."""
    from pathlib import Path

    job = Job({"job": "selftest", "action": "cleanup-then-sleep"}, module=SELFTEST)
    first = next(job.events(timeout=30))
    folder = Path(first["text"])
    assert folder.is_dir()
    job.cancel()
    assert job.proc.returncode == 1  # exit_now(1) after the cancelled error; SIGKILL would read -9
    assert not folder.exists()
    rest = collect(job, timeout=10)
    assert [e["kind"] for e in rest if e["type"] == "error"] == ["cancelled"]


def test_bad_input_in_job_is_an_input_error(tmp_path):
    from tests.conftest import fast_recipe

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{trunc")
    events = collect(Job({"job": "run", "recipe": fast_recipe(str(tmp_path / "m")).to_dict()}), timeout=120)
    err = next(e for e in events if e["type"] == "error")
    assert err["kind"] == "input", err
    assert str(tmp_path / "m") in err["message"]


def test_error_events_carry_the_parameter_an_input_error_names():
    from workbench.core.errors import InputError, error_fields

    assert error_fields(InputError("demo:nope: unknown demo model", "try demo:minilm", param="model")) == {
        "kind": "input", "message": "demo:nope: unknown demo model", "hint": "try demo:minilm", "param": "model"}
    assert error_fields(ValueError("boom"))["param"] is None
    events = collect(Job({"job": "selftest", "action": "raise"}, module=SELFTEST))
    err = next(e for e in events if e["type"] == "error")
    assert "param" in err and err["param"] is None


def test_an_input_error_in_a_job_names_its_parameter():
    events = collect(Job({"job": "inspect", "model": {"ref": "demo:nope"}, "device": "cpu"}), timeout=120)
    err = next(e for e in events if e["type"] == "error")
    assert err["kind"] == "input" and err["param"] == "model"
    assert err["message"].startswith("demo:nope: unknown demo model") and "--" not in err["message"]
