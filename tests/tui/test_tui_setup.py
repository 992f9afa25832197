"""Setup behaviour without jobs: panels built from the registry, checks as you type, conflicts explained before a run,
model detection and completion, recent models, keys as data, the command palette and help."""

from __future__ import annotations

import io
import json

import pytest

from tests.tui.helpers import fast_app, screen_text, wait_for
from workbench.core import optimizations, userconfig
from workbench.core.optimizations.base import Param, register, registry
from workbench.tui import keys
from workbench.tui.commands import palette_commands
from workbench.tui.panes.model import complete_path
from workbench.tui.screens.help import HelpScreen


@pytest.fixture
def extra_optimization():
    """An optimization registered at test time, as another module would: the UI must show it with no UI code."""
    name = "zz-test-opt"

    @register(name=name, family="test-family", stage="runtime", summary="A test-only optimization.",
              params=(Param("level", int, 3, "how much", min=1, max=8),
                      Param("mode", str, "a", "which mode", choices=("a", "b")),
                      Param("fast", bool, False, "go fast")))
    def _apply(model, params, ctx):  # pragma: no cover - never applied
        return {}

    yield name
    registry().pop(name)


async def test_panels_come_from_the_registry(extra_optimization):
    app = fast_app(auto_inspect=False)
    async with app.run_test(size=(120, 40)) as pilot:
        pane = app.main_screen.query_one("#opt-pane")
        for spec in optimizations.all_specs():  # every registered optimization has a toggle in its family panel
            box = pane.query_one(f"#opt-{spec.name}")
            family = pane.query_one(f"#family-{spec.family}")
            assert box in family.query("Checkbox")
        assert "Test family (1)" in str(pane.query_one("#family-test-family").title)
        assert not pane.query("#p-zz-test-opt-level")  # parameters are built when switched on

        # switched on, its parameters are typed widgets: int -> input, choices -> select, bool -> checkbox
        toggle = app.main_screen.query_one("#opt-zz-test-opt")
        toggle.scroll_visible(animate=False)
        # the scroll lands after a refresh or two (more on a loaded machine): click once the toggle is on screen
        await wait_for(pilot, lambda: app.screen.size.region.contains_point(toggle.region.offset)
                       and toggle.region.area > 0, timeout=20, what="the toggle scrolled into view")
        await pilot.click("#opt-zz-test-opt")
        await pilot.pause()
        assert pane.query_one("#p-zz-test-opt-level").__class__.__name__ == "Input"
        assert pane.query_one("#p-zz-test-opt-mode").__class__.__name__ == "Select"
        assert pane.query_one("#p-zz-test-opt-fast").__class__.__name__ == "Checkbox"

        # bounds are checked as you type, with the core's own message
        field = pane.query_one("#p-zz-test-opt-level")
        field.focus()
        field.value = "12"
        err_box, check = pane.query_one("#err-p-zz-test-opt-level"), pane.query_one("#opt-check")
        # the recipe check is the last stop of the edit's messages (field -> pane -> app -> check): pump until it
        await wait_for(pilot, lambda: "out of range" in str(check.render()), timeout=20, what="the recipe check")
        assert "-invalid" in field.classes
        err = str(err_box.render())
        assert "out of range" in err and "[1, 8]" in err
        field.value = "5"
        await wait_for(pilot, lambda: app.wb.steps()[0].params == {"level": "5"}, timeout=20, what="level=5 taken")
        assert "-invalid" not in field.classes
        assert app.wb.check()[1] is None or "model" in app.wb.check()[1]


async def test_conflicts_are_explained_and_block_the_run(tiny_llama):
    app = fast_app(auto_inspect=False)
    async with app.run_test(size=(120, 40)) as pilot:
        assert app.load_model(str(tiny_llama))
        await pilot.pause()
        app.toggle_optimization("int8-dynamic")
        await pilot.pause()
        fp16_reason = str(app.main_screen.query_one("#row-fp16 .opt-text").render())
        assert "cannot be combined" in fp16_reason  # explained on the row before anyone tries
        app.toggle_optimization("fp16")
        await pilot.pause()
        assert app.wb.enabled == ["int8-dynamic", "fp16"]
        assert "Apply order: 1 fp16 → 2 int8-dynamic" in screen_text(app)  # by stage, not by click order
        check = str(app.main_screen.query_one("#opt-check").render())
        assert check.startswith("✗") and "cannot be combined" in check
        await pilot.press("escape", "f5")
        await pilot.pause()
        assert app.run_handle is None  # nothing started
        assert any(sev == "error" and "cannot be combined" in m for sev, m in app.notices)


async def test_model_detection_errors_and_recent_models(tmp_path, tiny_bert):
    app = fast_app(auto_inspect=False)
    async with app.run_test(size=(120, 40)) as pilot:
        assert not app.load_model(str(tmp_path / "nope"))
        assert "path does not exist" in str(app.main_screen.query_one("#model-status").render())
        assert app.inspect_handle is None and app.run_handle is None
        assert app.load_model(str(tiny_bert))
        await pilot.pause()
        assert app.wb.task == "encoder"
        assert "BertModel" in screen_text(app)
        assert app.load_model("demo:minilm")  # the demo packages are pinned requirements
        assert app.wb.model_ref == "demo:minilm" and "demo:minilm" in app.recent
    recent = userconfig.load_recent()
    assert recent[0] in ("demo:minilm", str(tiny_bert)) and str(tiny_bert) in recent
    stored = json.loads((tmp_path / "config" / userconfig.RECENT_FILE).read_text())
    assert stored["models"] == recent  # kept under OPTBENCH_CONFIG_DIR, not the real home


def test_path_completion(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "llama-tiny").mkdir()
    (tmp_path / "models" / "model.gguf").write_bytes(b"GGUF")
    base = str(tmp_path / "models")
    assert complete_path(base + "/lla") == base + "/llama-tiny/"
    assert complete_path(base + "/mod") == base + "/model.gguf"
    assert complete_path(base) == base + "/"
    assert complete_path(base + "/zzz") is None


def test_key_table_is_consistent():
    from workbench.tui.app import OptbenchApp

    ids = [k.id for _, group in keys.GROUPS for k in group]
    assert len(ids) == len(set(ids))
    for k in keys.MAIN:  # every main key runs an action the app has
        assert hasattr(OptbenchApp, "action_" + k.action.split("(")[0]), k.action


async def test_keymap_file_remaps_a_key(tmp_path):
    cfg = tmp_path / "config"
    cfg.mkdir()
    (cfg / userconfig.KEYMAP_FILE).write_text('[keys]\n"optbench.help" = "f9"\n"optbench.tab_results" = "9"\n')
    app = fast_app(auto_inspect=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("escape", "9")
        assert app.main_screen.query_one("#tabs").active == "results"
        await pilot.press("f9")
        assert isinstance(app.screen, HelpScreen)
        assert "f9" in screen_text(app)  # the help screen shows the remapped key


async def test_help_lists_every_key():
    app = fast_app(auto_inspect=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        from rich.console import Console

        console = Console(width=400, record=True, file=io.StringIO())
        console.print(app.screen._content())
        rendered = console.export_text()
        for _, group in keys.GROUPS:
            for k in group:
                assert k.help in rendered, k.id
        assert "ssh -t" in rendered and "127.0.0.1" in rendered
        await pilot.press("escape")
        assert app.screen is app.main_screen


async def test_command_palette_offers_every_action_and_runs_them():
    app = fast_app(auto_inspect=False)
    async with app.run_test(size=(120, 40)) as pilot:
        texts = [t for t, _, _ in palette_commands(app)]
        for k in keys.MAIN:
            assert any(t.startswith(k.description) for t in texts), k.id
        for spec in optimizations.all_specs():
            assert f"Turn {spec.name} on" in texts
        # through the real palette: ctrl+p, type, enter
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"Turn prune-l1 on")
        await wait_for(pilot, lambda: "Turn prune-l1 on" in screen_text(app), 10, what="the palette's match")
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.wb.enabled == ["prune-l1"], 10, what="the toggle")
        # the focus lands on the toggle, not back in the model box where the next key would be typed
        await wait_for(pilot, lambda: getattr(app.focused, "id", None) == "opt-prune-l1", 10, what="the focus")
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"Results")
        await wait_for(pilot, lambda: "Results" in screen_text(app), 10, what="the palette's match")
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.main_screen.query_one("#tabs").active == "results", 10, what="the tab")
