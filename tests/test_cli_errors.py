"""How the CLI prints an error: the core names the parameter (``param="opt"``), the CLI renders its flag."""

import json

import pytest

from workbench.cli import main
from workbench.cli.checks import error_fields, error_text, fail
from workbench.core.errors import InputError, JobFailed


def test_error_text_names_the_flag_once():
    assert error_text("int4-weight-only: needs a CUDA GPU; expected device cuda", "opt") == \
        "--opt int4-weight-only: needs a CUDA GPU; expected device cuda"
    assert error_text("0.5: expected a percentage", "accuracy_budget") == "--accuracy-budget 0.5: expected a percentage"
    # older wording that already names the flag, and errors about no parameter, are printed as they are
    assert error_text("--opt turbo: unknown optimization", "opt") == "--opt turbo: unknown optimization"
    assert error_text("session.toml: cannot be parsed", None) == "session.toml: cannot be parsed"
    assert error_text("x: bad", "") == "x: bad"


def test_error_fields_of_an_exception_and_of_a_job_event():
    exc = InputError("0: expected an integer >= 1", "try 8", param="batch")
    assert error_fields(exc) == {"kind": "input", "message": "--batch 0: expected an integer >= 1", "hint": "try 8",
                                 "param": "batch"}
    event = {"type": "error", "kind": "job", "message": "cuda:3: no such device", "hint": "", "param": "device"}
    assert error_fields(event)["message"] == "--device cuda:3: no such device"
    assert error_fields({"kind": "crashed", "message": "the job ended without a result"}) == {
        "kind": "crashed", "message": "the job ended without a result", "hint": "", "param": None}
    assert error_fields(JobFailed("out of memory"))["param"] is None


def test_fail_prints_one_line_and_the_json_document(capsys):
    fail(InputError("int4-weight-only: needs a CUDA GPU", "use --device cuda", param="opt"), as_json=True)
    out, err = capsys.readouterr()
    assert err.splitlines() == ["optbench: error: --opt int4-weight-only: needs a CUDA GPU", "hint: use --device cuda"]
    assert json.loads(out) == {"ok": False, "error": {"kind": "input", "message": "--opt int4-weight-only: needs a "
                                                      "CUDA GPU", "hint": "use --device cuda", "param": "opt"}}
    fail({"kind": "input", "message": "--batch 0: out of range"})
    out, err = capsys.readouterr()
    assert out == "" and err == "optbench: error: --batch 0: out of range\n"


def test_main_renders_a_raised_error_and_a_job_error_event(monkeypatch, capsys, workdir):
    import workbench.cli.run as run_cmd

    def refuse(recipe):
        raise InputError("int4-weight-only: needs a CUDA GPU; expected device cuda", param="opt")

    monkeypatch.setattr(run_cmd, "precheck", refuse)
    assert main(["run", "--model", "demo:minilm", "--opt", "int4-weight-only", "--json"]) == 2
    out, err = capsys.readouterr()
    assert "optbench: error: --opt int4-weight-only: needs a CUDA GPU; expected device cuda" in err
    assert json.loads(out)["error"]["param"] == "opt"

    class FailingJob:
        def __init__(self, spec):
            pass

        def events(self):
            yield {"type": "error", "kind": "input", "message": "cuda:7: not available", "hint": "", "param": "device"}

        def cancel(self):
            pass

    import workbench.core.jobs.client as client

    monkeypatch.setattr(run_cmd, "precheck", lambda recipe: recipe)
    monkeypatch.setattr(client, "Job", FailingJob)
    assert main(["run", "--model", "demo:minilm", "--device", "cuda:7"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == "optbench: error: --device cuda:7: not available"


@pytest.mark.parametrize("module", ["workbench.cli", "workbench.cli.main"])
def test_cli_start_up_does_not_import_torch(module):
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = f"import sys, {module}\nprint(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'textual', 'rich')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=True).stdout
    assert out.strip() == "[]"
