"""The baseline accuracy cache: measured once per (model content, eval set, settings, environment).

Stored as JSON (metrics) + safetensors (reference tensors): no pickle. Keys include every setting that changes
the number, so a stale result cannot be served for different settings.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from workbench.core import atomic


def cache_dir() -> Path:
    env = os.environ.get("OPTBENCH_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("optbench"))


def key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:40]


def load_baseline(k: str):
    from safetensors.torch import load_file

    base = cache_dir() / "baselines"
    meta, tensors = base / f"{k}.json", base / f"{k}.safetensors"
    if not meta.is_file():
        return None
    try:
        doc = json.loads(meta.read_text())
        ref = load_file(str(tensors)) if tensors.is_file() else {}
    except Exception:  # a damaged cache entry is a miss, never an error
        return None
    return doc, ref


def save_baseline(k: str, doc: dict, reference: dict | None) -> None:
    from safetensors.torch import save as st_save

    base = cache_dir() / "baselines"
    if reference:
        atomic.write_bytes(base / f"{k}.safetensors", st_save({n: t.contiguous() for n, t in reference.items()}))
    atomic.write_json(base / f"{k}.json", doc)
