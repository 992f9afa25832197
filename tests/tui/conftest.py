"""TUI tests: every test gets its own config folder (recent models, keymap) besides the root conftest's sessions
and cache folders, so nothing touches the user's home."""

import asyncio
import inspect
import os

import pytest

# Read once when textual is imported: no tab-underline or toast animations in tests and snapshots.
os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTBENCH_CONFIG_DIR", str(tmp_path / "config"))


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Run ``async def`` tests in this folder on a fresh asyncio loop (Textual's ``run_test`` is async)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(pyfuncitem.obj(**args))
    return True
