"""Per-user settings in the user's config folder: recently used models and key overrides. Torch-free, Textual-free.

The folder is ``$OPTBENCH_CONFIG_DIR`` when set (tests point it at a temporary folder), else platformdirs'
user config dir for "optbench" (``~/.config/optbench`` on Linux). Nothing here may fail the caller: an unreadable
or unwritable file means "no recent models" / "default keys", and the problem is returned, not raised.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

from workbench.core import atomic

APP_NAME = "optbench"
RECENT_MAX = 12
RECENT_FILE = "recent_models.json"
KEYMAP_FILE = "keymap.toml"


def config_dir() -> Path:
    override = os.environ.get("OPTBENCH_CONFIG_DIR")
    if override:
        return Path(override).expanduser()
    from platformdirs import user_config_dir

    return Path(user_config_dir(APP_NAME, appauthor=False))


def recent_path() -> Path:
    return config_dir() / RECENT_FILE


def keymap_path() -> Path:
    return config_dir() / KEYMAP_FILE


def load_recent() -> list[str]:
    """Most recent first; [] when the file is missing or unreadable."""
    try:
        data = json.loads(recent_path().read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return []
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, list):
        return []
    out: list[str] = []
    for item in models:
        if isinstance(item, str) and item.strip() and item not in out:
            out.append(item)
    return out[:RECENT_MAX]


def add_recent(ref: str) -> tuple[list[str], str | None]:
    """Put ``ref`` first in the recent list and save it. Returns (the list, an error message or None)."""
    ref = ref.strip()
    refs = [ref] + [r for r in load_recent() if r != ref]
    refs = refs[:RECENT_MAX]
    try:
        atomic.write_json(recent_path(), {"models": refs})
    except OSError as exc:
        return refs, f"{recent_path()}: not saved ({exc.strerror or exc})"
    return refs, None


def load_keymap() -> tuple[dict[str, str], str | None]:
    """Key overrides ``{binding id: "key[,key]"}`` from keymap.toml (a ``[keys]`` table). Returns (map, error)."""
    path = keymap_path()
    if not path.is_file():
        return {}, None
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return {}, f"{path}: cannot be read ({exc}); default keys are used"
    keys = doc.get("keys", {})
    if not isinstance(keys, dict):
        return {}, f"{path}: [keys] must be a table of binding id = \"key\"; default keys are used"
    good = {str(k): v for k, v in keys.items() if isinstance(v, str) and v.strip()}
    bad = sorted(set(keys) - set(good))
    return good, (f"{path}: ignored {', '.join(bad)} (values must be key strings)" if bad else None)
