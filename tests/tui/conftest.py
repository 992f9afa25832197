"""TUI tests: every test gets its own config folder (recent models, keymap) besides the root conftest's sessions
and cache folders, so nothing touches the user's home."""

import os

import pytest

# Read once when textual is imported: no tab-underline or toast animations in tests and snapshots.
os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTBENCH_CONFIG_DIR", str(tmp_path / "config"))


@pytest.fixture
def anyio_backend():
    return "asyncio"


def pytest_collection_modifyitems(items):
    """Async tests in this folder run on asyncio through anyio's pytest plugin."""
    import inspect

    for item in items:
        if "tests/tui/" in str(item.fspath).replace("\\", "/") and inspect.iscoroutinefunction(
                getattr(item, "function", None)):
            item.add_marker(pytest.mark.anyio)
