"""Snapshots (pytest-textual-snapshot) of the main screens at 80×24 and 120×40, from deterministic scenes.

Update after an intended change with: pytest tests/tui/test_tui_snapshots.py --snapshot-update
"""

from __future__ import annotations

import pytest

from tests.conftest import ROOT
from tests.tui import scenes
from workbench.core import optimizations

SIZES = [(80, 24), (120, 40)]
SCENES = {
    "setup": scenes.setup_scene,
    "live": scenes.live_scene,
    "results": scenes.results_scene,
    "sessions": scenes.sessions_scene,
    "compare": scenes.compare_scene,
    "help": scenes.help_scene,
}


# The registry grows as optimizations are added; the snapshots pin the four it started with, so a new optimization
# does not rewrite every setup snapshot (test_tui_setup.py checks that every registered one appears).
PINNED = ("prune-l1", "fp16", "bf16", "int8-dynamic")


@pytest.fixture(autouse=True)
def _repo_cwd_and_pinned_registry(monkeypatch):
    monkeypatch.chdir(ROOT)  # the scenes use a model path relative to the repository
    real = optimizations.all_specs
    monkeypatch.setattr(optimizations, "all_specs", lambda: [s for s in real() if s.name in PINNED])


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("scene", list(SCENES))
def test_snapshot(snap_compare, scene, size):
    assert snap_compare(scenes.make_app(), terminal_size=size, run_before=SCENES[scene])
