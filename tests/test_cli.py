"""The command line: exit codes, one-line errors naming the input, nothing on disk changed by bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FAST, ROOT


def cli(*args, cwd, timeout=300, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "workbench", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def snapshot(path: Path) -> dict:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in path.rglob("*")}


def bad_inputs(tmp_path: Path, tiny_bert: Path):
    notmodel = tmp_path / "notmodel"
    notmodel.mkdir(exist_ok=True)
    (notmodel / "readme.md").write_text("hi")
    broken = tmp_path / "broken"
    broken.mkdir(exist_ok=True)
    for f in tiny_bert.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    nocol = tmp_path / "nocol.jsonl"
    nocol.write_text('{"body": "x"}\n')
    m = str(tiny_bert)
    return [
        (["run", "--model", str(tmp_path / "nope")], "path does not exist"),
        (["run", "--model", str(notmodel)], "folder is not a model (no config.json)"),
        (["run", "--model", str(broken), *FAST], "could not load its weights"),
        (["run", "--model", m, "--opt", "turbo"], "--opt turbo: unknown optimization"),
        (["run", "--model", m, "--opt", "prune-l1:sparsity=1.5"], "sparsity='1.5' is out of range"),
        (["run", "--model", m, "--opt", "prune-l1:amount=0.5"], "unknown parameter 'amount'"),
        (["run", "--model", m, "--eval", str(nocol)], "no column 'text'"),
        (["run", "--model", m, "--eval", str(empty)], "is empty"),
        (["run", "--model", m, "--session", "../escape"], "session name '../escape': not allowed"),
        (["run", "--model", "demo:nothing"], "unknown demo model"),
        (["run", "--model", m, "--batch", "0"], "--batch 0"),
        (["run", "--model", m, "--opt", "early-exit", "--export", str(tmp_path / "ee")],
         "early-exit cannot be exported (early exit is a runtime policy"),  # before loading, not after the run
        (["sessions", "show", "missing"], "not found"),
        (["export", "missing", "--out", str(tmp_path / "o")], "not found"),
    ]


def test_bad_inputs_exit_2_with_one_line_and_change_nothing(tmp_path, tiny_bert, workdir):
    cases = bad_inputs(tmp_path, tiny_bert)
    before = snapshot(tmp_path)
    for args, message in cases:
        r = cli(*args, cwd=workdir)
        assert r.returncode == 2, (args, r.stderr)
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("optbench: error:")]
        assert len(lines) == 1 and message in lines[0], (args, r.stderr)
        assert r.stdout == ""
    assert snapshot(tmp_path) == before
    assert not (workdir / "sessions").exists()
    assert not (tmp_path / "escape").exists()


def test_corrupt_session_toml_exit_2_and_untouched(workdir):
    s = workdir / "sessions" / "bad"
    s.mkdir(parents=True)
    (s / "session.toml").write_text("schema = 1\n[model\n")
    before = (s / "session.toml").read_bytes()
    for args in (["sessions", "show", "bad"], ["run", "--session", "bad"]):
        r = cli(*args, cwd=workdir)
        assert r.returncode == 2 and "session.toml: cannot be parsed" in r.stderr
    assert (s / "session.toml").read_bytes() == before


def test_json_error_document(workdir):
    r = cli("run", "--model", "/nope/x", "--json", cwd=workdir)
    assert r.returncode == 2
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and doc["error"]["kind"] == "input"


def test_an_export_that_fails_after_the_run_exits_1_with_the_report(tiny_bert, workdir, tmp_path):
    """bf16:mode=autocast is exportable only as a runtime setting, known after applying: the run's figures stand
    (the JSON report, with export.verified false), the exit code says the export failed, and no folder is left."""
    out = tmp_path / "art"
    r = cli("run", "--model", str(tiny_bert), "--opt", "bf16:mode=autocast", "--export", str(out), "--json", *FAST,
            cwd=workdir)
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["export"]["verified"] is False and "autocast" in doc["export"]["error"]
    assert doc["optimized"]["latency_ms"]["p50"] > 0
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("optbench: error: --export")]
    assert not out.exists()


def test_run_session_rerun_and_export(tiny_bert, workdir, tmp_path):
    r = cli("run", "--model", str(tiny_bert), "--opt", "prune-l1:sparsity=0.5", "--session", "exp", "--json",
            *FAST, cwd=workdir)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)  # exactly one JSON document
    assert doc["optimizations"] == [{"name": "prune-l1", "params": {"sparsity": 0.5, "scope": "layer",
                                                                    "skip_head": True}}]
    for key in ("model", "task", "device", "baseline", "optimized", "accuracy", "speedup"):
        assert key in doc
    assert doc["export"]["verified"] is True
    # re-run the saved session's recipe without repeating it
    r2 = cli("run", "--session", "exp", "--json", *FAST, cwd=workdir)
    assert r2.returncode == 0, r2.stderr
    shown = json.loads(cli("sessions", "show", "exp", "--json", cwd=workdir).stdout)
    assert len(shown["results"]["runs"]) == 2 and shown["recipe"]["optimizations"][0]["name"] == "prune-l1"
    listed = json.loads(cli("sessions", "--json", cwd=workdir).stdout)
    assert [s["name"] for s in listed] == ["exp"]
    out = tmp_path / "exported"
    r3 = cli("export", "exp", "--out", str(out), cwd=workdir)
    assert r3.returncode == 0, r3.stderr
    assert "verified" in r3.stdout and (out / "model.safetensors").is_file()
    # exporting onto a non-empty folder is refused and leaves it alone
    r4 = cli("export", "exp", "--out", str(out), cwd=workdir)
    assert r4.returncode == 2 and "not an empty folder" in r4.stderr


def test_optimizations_json_lists_params(workdir):
    r = cli("optimizations", "--json", cwd=workdir)
    specs = {s["name"]: s for s in json.loads(r.stdout)}
    p = {x["name"]: x for x in specs["prune-l1"]["params"]}
    assert p["sparsity"]["type"] == "float" and p["sparsity"]["max"] == 0.99 and p["sparsity"]["help"]


def test_version_and_help(workdir):
    assert cli("--version", cwd=workdir).stdout.startswith("optbench ")
    assert "run" in cli("--help", cwd=workdir).stdout


def test_killed_job_leaves_session_readable(tiny_bert, workdir):
    """A job killed mid-run: the parent reports it, the session written before stays intact and readable."""
    from tests.conftest import fast_recipe
    from workbench.core.jobs.client import Job
    from workbench.core.session import SessionStore

    store = SessionStore(workdir / "sessions")
    recipe = fast_recipe(str(tiny_bert))
    session = store.create("k", recipe)
    session.add_run({"id": 1, "speedup": 1.0})
    slow = fast_recipe(str(tiny_bert))
    slow.bench.min_seconds = 60
    job = Job({"job": "run", "recipe": slow.to_dict(), "artifact_dir": str(session.artifact_dir)})
    for event in job.events(timeout=120):
        if event["type"] == "progress" and "benchmarking" in event["stage"]:
            os.kill(job.pid, 9)
            break
    rest = list(job.events(timeout=30))
    assert any(e["type"] == "error" and e["kind"] == "killed" for e in rest)
    again = store.open("k")
    assert len(again.results["runs"]) == 1
    assert not session.artifact_dir.exists()
    assert sorted(p.name for p in session.dir.iterdir()) == ["results.json", "session.toml"]
