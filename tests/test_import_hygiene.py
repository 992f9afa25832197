"""The core never imports Textual; the modules a UI process uses never import torch (checked in a fresh interpreter)."""

import subprocess
import sys

from tests.conftest import ROOT

TORCH_FREE = [
    "workbench.core.recipe", "workbench.core.session", "workbench.core.modelref", "workbench.core.data",
    "workbench.core.jobs.client", "workbench.core.jobs.protocol", "workbench.core.errors",
    "workbench.core.measure.monitor", "workbench.core.measure.stats", "workbench.core.optimizations",
]


def loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=True).stdout
    return set(out.split())


def test_core_does_not_import_textual():
    import pkgutil

    import workbench.core

    names = [m.name for m in pkgutil.walk_packages(workbench.core.__path__, "workbench.core.")
             if not m.name.endswith(".child")]
    mods = loaded_after("import importlib\n" + "\n".join(f"importlib.import_module({n!r})" for n in names))
    assert not any(m == "textual" or m.startswith("textual.") for m in mods)


def test_ui_facing_core_modules_do_not_import_torch():
    mods = loaded_after("import importlib\n" + "\n".join(f"importlib.import_module({n!r})" for n in TORCH_FREE)
                        + "\nfrom workbench.core import optimizations; optimizations.all_specs()")
    heavy = sorted(m for m in mods if m.split(".")[0] in ("torch", "transformers", "torchao", "numpy"))
    assert heavy == [], heavy
