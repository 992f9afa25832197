"""The shape of the package (issue 15's rules): no file over 600 lines, no import circles among top-level imports,
and no layer importing one above it at the top level (core below cli and tui; cli and tui side by side)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "workbench"
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _top_level_imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Modules of the package imported when ``name`` is imported (module level only, not inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in tree.body:
        if isinstance(node, ast.If):  # e.g. `if TYPE_CHECKING:` blocks are not executed at import
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m in known and m != name}


def test_no_file_in_the_package_is_over_600_lines():
    long = {str(p.relative_to(PKG.parent)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split these: {long}"


def test_no_import_circles_at_the_top_level():
    mods = _modules()
    graph = {name: _top_level_imports(path, name, set(mods)) for name, path in mods.items()}
    assert sum(len(deps) for deps in graph.values()) > 200  # the parser sees the package's imports at all
    # A package's __init__ importing its own submodules is how re-exports work, not a circle.
    graph = {n: {d for d in deps if not d.startswith(n + ".")} for n, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                raise AssertionError("import circle: " + " → ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    # and the search does find one when there is one
    graph, state, stack = {"a": {"b"}, "b": {"a"}}, {}, []
    try:
        visit("a")
    except AssertionError as exc:
        assert "a → b → a" in str(exc)
    else:
        raise AssertionError("a two-module circle went unnoticed")


def test_no_layer_imports_one_above_it():
    mods = _modules()
    rank = {"workbench.core": 0, "workbench.cli": 1, "workbench.tui": 1}

    def layer(m: str) -> str | None:
        return next((k for k in rank if m == k or m.startswith(k + ".")), None)

    bad = []
    for name, path in mods.items():
        mine = layer(name)
        if mine is None:
            continue
        for dep in _top_level_imports(path, name, set(mods)):
            theirs = layer(dep)
            if theirs is not None and theirs != mine and rank[theirs] >= rank[mine]:
                bad.append(f"{name} imports {dep}")
    assert not bad, bad
