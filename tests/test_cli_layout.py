"""The CLI package's layering: main imports the commands; a command imports only the shared modules (args, checks,
progress, render), never main nor another command; the shared modules import no command."""

import ast
from pathlib import Path

from tests.conftest import ROOT

CLI = ROOT / "workbench" / "cli"
SHARED = {"args", "checks", "progress", "render"}


def cli_imports(path: Path) -> set[str]:
    """The workbench.cli modules a file imports (anywhere in it, lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("workbench.cli"):
            if node.module == "workbench.cli":
                found |= {a.name for a in node.names}
            else:
                found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[2] for a in node.names if a.name.startswith("workbench.cli.")}
    return found


def test_commands_import_only_the_shared_modules():
    modules = {p.stem for p in CLI.glob("*.py")} - {"__init__"}
    commands = modules - SHARED - {"main"}
    assert {"run", "sessions", "optimizations", "export", "serve", "info", "recommend", "sweep", "tune"} <= commands
    for name in commands:
        assert cli_imports(CLI / f"{name}.py") <= SHARED, name
    for name in SHARED:
        assert cli_imports(CLI / f"{name}.py") <= SHARED - {name}, name
    assert commands <= cli_imports(CLI / "main.py")


def test_no_cli_file_over_600_lines():
    for p in CLI.glob("*.py"):
        assert len(p.read_text().splitlines()) <= 600, p.name
