"""The optimization registry. Every module in this package registers its optimizations on import.

Adding an optimization is adding a module here: the CLI (``--opt``), the session file, the recipe validator and the
TUI panels all read the registry. Modules must not import torch at module level (tests check that).
Modules whose names start with ``_``, and the shared helpers in ``_HELPERS`` (the graph-decode loop, the calibration
text), register nothing.
"""

from __future__ import annotations

import importlib
import pkgutil

from workbench.core.errors import InputError
from workbench.core.optimizations.base import STAGES, Applied, OptSpec, Param, register, registry

__all__ = ["Applied", "OptSpec", "Param", "STAGES", "all_specs", "get", "parse_opt_arg", "register"]

_HELPERS = frozenset({"base", "calibration", "fastgen", "quant_calibrate"})
_loaded = False


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name not in _HELPERS and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    _loaded = True


def all_specs() -> list[OptSpec]:
    _load_all()
    return sorted(registry().values(), key=lambda s: (STAGES[s.stage], s.family, s.name))


def get(name: str) -> OptSpec:
    _load_all()
    spec = registry().get(name)
    if spec is None:
        names = ", ".join(s.name for s in all_specs())
        raise InputError(f"{name}: unknown optimization; expected one of: {names}", param="opt")
    return spec


def parse_opt_arg(text: str) -> tuple[str, dict[str, str]]:
    """``NAME[:key=value,...]`` -> (name, raw params). Values stay strings; ``OptSpec.resolve`` checks them."""
    name, _, rest = text.strip().partition(":")
    name = name.strip()
    if not name:
        raise InputError(f"{text!r}: expected NAME[:key=value,...]", param="opt")
    params: dict[str, str] = {}
    if rest.strip():
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise InputError(f"{text!r}: {item!r} is not key=value", param="opt")
            params[key.strip()] = value.strip()
    return name, params
