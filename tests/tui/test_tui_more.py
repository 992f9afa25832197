"""Sessions screen (rename, delete with confirmation), the accuracy budget, a killed job, hang-up handling, and the
setup state's rules."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from tests.conftest import ROOT
from tests.tui.helpers import canned_report, fast_app, screen_text, wait_for
from workbench.core.recipe import ModelSpec, OptStep, Recipe
from workbench.tui import fmt
from tests.fixtures.selftest_jobs import SELFTEST
from workbench.tui.jobs import JobHandle
from workbench.tui.panes.accuracy import AccuracyPane
from workbench.tui.screens.dialogs import ConfirmDialog, PromptDialog
from workbench.tui.screens.sessions import SessionsScreen
from workbench.tui.state import Workbench


async def test_sessions_screen_renames_and_deletes_with_confirmation():
    app = fast_app(auto_inspect=False)
    async with app.run_test(size=(120, 40)) as pilot:
        for name in ("alpha", "beta"):
            s = app.store.create(name, Recipe(ModelSpec("demo:minilm")), {})
            s.add_run({"id": 1, **canned_report()})
        assert app.open_session("alpha")
        await pilot.press("f3")
        assert isinstance(app.screen, SessionsScreen)
        text = screen_text(app)
        assert "alpha" in text and "beta" in text and "0.86×" in text  # best speedup column

        await pilot.press("n")  # rename the selected (first) session
        assert isinstance(app.screen, PromptDialog)
        app.screen.query_one("#prompt-input").value = "../escape"
        await pilot.press("enter")
        assert isinstance(app.screen, PromptDialog)  # refused, with the reason shown
        assert "not allowed" in str(app.screen.query_one("#prompt-error").render())
        app.screen.query_one("#prompt-input").value = "gamma"
        await pilot.press("enter")
        await pilot.pause()
        assert app.store.exists("gamma") and not app.store.exists("alpha")
        assert app.session.name == "gamma"  # the open session followed the rename

        await pilot.press("d")  # delete asks first; "Keep" keeps it
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.click("#no")
        await pilot.pause()
        names = {r["name"] for r in app.store.list()}
        assert names == {"beta", "gamma"}
        await pilot.press("d")
        await pilot.click("#yes")
        await pilot.pause()
        assert len(app.store.list()) == 1 and isinstance(app.screen, SessionsScreen)


async def test_accuracy_colours_follow_the_budget():
    app = fast_app(auto_inspect=False)
    async with app.run_test(size=(120, 40)) as pilot:
        app.show_report(canned_report(), 1)
        pane = app.pane(AccuracyPane)
        # agreement fell 3.1 %, perplexity rose 0.04 %: with a 1 % budget one is over, one within
        assert pane.statuses()["next_token_agreement"] == "over"
        assert pane.statuses()["perplexity"] == "within"
        field = app.main_screen.query_one("#set-budget")
        await pilot.pause()
        field.value = "5"
        # the edit travels Input.Changed -> SettingsPane.Changed -> app: pump until it lands (CI machines are slower)
        await wait_for(pilot, lambda: app.wb.budget_pct == 5.0, timeout=20, what="the budget field to take 5")
        assert pane.statuses()["next_token_agreement"] == "within"
        field.value = "lots"
        error = app.main_screen.query_one("#settings-error")
        await wait_for(pilot, lambda: "budget" in str(error.render()), timeout=20, what="the budget error")
        assert app.wb.budget_pct == 5.0  # an invalid value is shown as an error and not taken


def test_budget_rule():
    assert fmt.budget_status({"delta": 0.01, "baseline": 1.0, "higher_is_better": True}, 1) == "better"
    assert fmt.budget_status({"delta": -0.005, "baseline": 1.0, "higher_is_better": True}, 1) == "within"
    assert fmt.budget_status({"delta": -0.02, "baseline": 1.0, "higher_is_better": True}, 1) == "over"
    assert fmt.budget_status({"delta": 0.5, "baseline": 10.0, "higher_is_better": False}, 1) == "over"
    assert fmt.budget_status({"delta": 0.001, "baseline": 0.0, "higher_is_better": False}, 1) == "within"
    assert fmt.budget_status({"delta": None, "baseline": 0.0}, 1) == "unknown"


def test_workbench_orders_by_stage_and_keeps_only_changed_params():
    wb = Workbench(model_ref="demo:minilm")
    wb.set_enabled("int8-dynamic", True)
    wb.set_enabled("prune-l1", True)
    wb.set_param("prune-l1", "sparsity", "0.5")  # the default, written as text
    wb.set_param("prune-l1", "scope", "global")
    steps = wb.steps()
    assert [s.name for s in steps] == ["prune-l1", "int8-dynamic"]  # prune (stage) before quantize
    assert steps[0] == OptStep("prune-l1", {"scope": "global"})
    recipe, problem = wb.check()
    assert problem is None and recipe.optimizations[0].params["sparsity"] == 0.5


async def test_a_killed_job_is_a_notice_and_the_app_stays():
    app = fast_app(auto_inspect=False)
    async with app.run_test(size=(100, 30)) as pilot:
        session = app.store.create("k", Recipe(ModelSpec("demo:minilm")), {})
        app.track(JobHandle("run", {"job": "selftest", "action": "kill"}, session=session, module=SELFTEST).start())
        await wait_for(pilot, lambda: not app.run_handle.active, 30, what="the killed job")
        assert app.run_handle.error["kind"] == "killed"
        assert any(sev == "error" and "out-of-memory killer" in m for sev, m in app.notices)
        assert app.is_running


def _app_with_a_running_job(tiny_llama, tmp_path):
    from tests.tui.helpers import PtyApp

    app = PtyApp(str(tiny_llama), {**os.environ, "OPTBENCH_SESSIONS": str(tmp_path / "s"),
                                   "OPTBENCH_CONFIG_DIR": str(tmp_path / "c")})
    ui = psutil.Process(app.proc.pid)
    deadline = time.monotonic() + 30
    app.wait_for(b"Optimizations", deadline)
    app.write(b"\x1b[15~")  # F5: run (cancels the inspect job it started with)
    job = None
    while job is None and time.monotonic() < deadline:
        app.pump(0.2)
        kids = [k for k in ui.children(recursive=True) if "workbench.core.jobs.child" in " ".join(k.cmdline())]
        job = kids[-1] if kids else None
    if job is None:
        app.close()
        raise AssertionError("no job started")
    return app, job


def test_hangup_ends_the_app_and_its_job(tiny_llama, tmp_path):
    """A dropped SSH connection (SIGHUP) must not leave a job running with nobody to save its results."""
    app, job = _app_with_a_running_job(tiny_llama, tmp_path)
    try:
        app.pump(0.5)
        os.kill(app.proc.pid, signal.SIGHUP)
        code = app.wait_exit(60)  # generous: CI shares two cores with the job it must stop
        gone, alive = psutil.wait_procs([job], timeout=5)
        assert not alive, "the job outlived the app"
        assert code == 128 + signal.SIGHUP
    finally:
        app.close()


def test_hangup_with_a_stalled_terminal_still_ends_the_app(tiny_llama, tmp_path):
    """A terminal that stops reading (a stalled SSH link, ^S) blocks Textual's shutdown, which waits for its writes;
    after SIGHUP the app still goes within its grace period and takes its job with it."""
    from workbench.tui.app import EXIT_GRACE_S

    app, job = _app_with_a_running_job(tiny_llama, tmp_path)
    try:
        time.sleep(4)  # nobody reads: the live panes fill the terminal's buffer
        os.kill(app.proc.pid, signal.SIGHUP)
        app.proc.wait(EXIT_GRACE_S + 30)  # not reading, on purpose
        gone, alive = psutil.wait_procs([job], timeout=5)
        assert not alive, "the job outlived the app"
        assert app.proc.returncode == 128 + signal.SIGHUP
    finally:
        app.close()


def test_result_pane_warns_when_the_batch_is_above_where_a_kernel_paid():
    """kernel=gemlite's reports say where GemLite was measured to pay, for the measured shape nearest the model's
    size (int8: batch 1 only at 1B, batch 1 and 8 at 8B; int4: nowhere at 1B); the Result pane warns for a run
    above that batch, and says nothing for one within it."""
    from rich.console import Console

    from workbench.core.optimizations import _gemlite
    from workbench.tui.panes.summary import batch_caveats, summary_table

    int8 = {"name": "int8-weight-only", **_gemlite.batch_note("int8", 1.5e9)}
    plain = {"name": "bf16"}
    assert batch_caveats({"bench": {"batch": 1}, "optimization_reports": [int8, plain]}) == []
    notes = batch_caveats({"bench": {"batch": 8}, "optimization_reports": [int8, plain]})
    assert len(notes) == 1 and notes[0].startswith("int8-weight-only at batch 8: GemLite int8 beat bf16 at batch 1 "
                                                   "only on the Llama-1B shape")
    int8_7b = {"name": "int8-weight-only", **_gemlite.batch_note("int8", 7e9)}
    assert batch_caveats({"bench": {"batch": 8}, "optimization_reports": [int8_7b]}) == []
    assert len(batch_caveats({"bench": {"batch": 16}, "optimization_reports": [int8_7b]})) == 1
    int4 = {"name": "int4-weight-only", **_gemlite.batch_note("int4", 135e6)}
    assert len(batch_caveats({"bench": {"batch": 1}, "optimization_reports": [int4]})) == 1
    console = Console(width=200, record=True)
    console.print(summary_table({"bench": {"batch": 8}, "optimization_reports": [int8]}))
    assert "⚠ int8-weight-only at batch 8" in console.export_text()
