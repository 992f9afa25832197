"""The UI process never imports torch or transformers (checked in a fresh interpreter that drives the app under
Pilot through every screen), and the core stays importable without Textual."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

HEAVY = ("torch", "transformers", "torchao", "accelerate", "safetensors", "numpy")

DRIVE_APP = r"""
import asyncio, json, sys
from workbench.core.recipe import ModelSpec, Recipe
from workbench.tui.app import OptbenchApp

REPORT = json.loads(open(sys.argv[2]).read())

async def main():
    app = OptbenchApp(auto_inspect=False)
    async with app.run_test(size=(100, 30)) as pilot:
        assert app.load_model(sys.argv[1])
        await pilot.pause()
        app.toggle_optimization("int8-dynamic")
        session = app.store.create("hygiene", Recipe(ModelSpec(sys.argv[1])), {})
        session.add_run({"id": 1, **REPORT})
        assert app.open_session("hygiene")
        for tab in ("run", "results", "setup"):
            app.action_show_tab(tab)
            await pilot.pause()
        await pilot.press("escape", "f1")
        await pilot.press("escape", "f3")
        await pilot.press("escape", "f4")
        await pilot.press("space", "escape", "ctrl+p")
        await pilot.press(*"int8")
        await pilot.pause(0.3)
        await pilot.press("escape")
    return app

app = asyncio.run(main())
heavy = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
print(json.dumps({"heavy": heavy, "textual": "textual" in sys.modules, "notices": app.notices}))
"""


def test_ui_process_never_imports_torch(tiny_llama, tmp_path):
    code = f"HEAVY = {HEAVY!r}\n" + DRIVE_APP
    env_cmd = [sys.executable, "-c", code, str(tiny_llama), str(ROOT / "tests/tui/fixtures/report_llama.json")]
    import os

    env = {**os.environ, "OPTBENCH_SESSIONS": str(tmp_path / "s"), "OPTBENCH_CONFIG_DIR": str(tmp_path / "c")}
    out = subprocess.run(env_cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["textual"] is True  # the app really ran in that interpreter
    assert result["heavy"] == [], result["heavy"]
    assert not [m for sev, m in result["notices"] if sev == "error"], result["notices"]


def test_core_modules_the_ui_uses_do_not_import_textual_or_torch():
    mods = ["workbench.core", "workbench.core.userconfig", "workbench.core.session", "workbench.core.recipe",
            "workbench.core.modelref", "workbench.core.models", "workbench.core.jobs.client",
            "workbench.core.optimizations", "workbench.core.errors"]
    code = "import importlib, json, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in mods) + \
        "from workbench.core import optimizations; optimizations.all_specs()\n" + \
        "from workbench.core.userconfig import config_dir; config_dir()\n" + \
        "print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout)
    assert not [m for m in loaded if m.split(".")[0] == "textual"]
    assert not [m for m in loaded if m.split(".")[0] in HEAVY]
