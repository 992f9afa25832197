"""Snapshots (pytest-textual-snapshot) of the main screens at 80×24 and 120×40, from deterministic scenes.

Update after an intended change with: pytest tests/tui/test_tui_snapshots.py --snapshot-update
"""

from __future__ import annotations

import pytest

from tests.conftest import ROOT
from tests.tui import scenes

SIZES = [(80, 24), (120, 40)]
SCENES = {
    "setup": scenes.setup_scene,
    "live": scenes.live_scene,
    "results": scenes.results_scene,
    "sessions": scenes.sessions_scene,
    "compare": scenes.compare_scene,
    "help": scenes.help_scene,
}


@pytest.fixture(autouse=True)
def _repo_cwd_and_frozen_registry(monkeypatch):
    monkeypatch.chdir(ROOT)  # the scenes use a model path relative to the repository
    scenes.freeze_registry(monkeypatch)  # new optimizations must not rewrite every snapshot


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("scene", list(SCENES))
def test_snapshot(snap_compare, scene, size):
    assert snap_compare(scenes.make_app(), terminal_size=size, run_before=SCENES[scene])
