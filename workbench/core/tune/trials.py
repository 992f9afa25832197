"""Tune's trial cache: ``cache_dir()/"trials"/<key>.json``, keyed on everything that changes a trial's numbers
(docs/tune.md, "Trial cache"). Torch-free."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from workbench.core import atomic, cache
from workbench.core.recipe import Recipe
from workbench.core.tune.events import jsonable

TRIAL_SCHEMA = 1


def trials_dir() -> Path:
    return cache.cache_dir() / "trials"


def context_key_parts(ctx: dict, recipe: Recipe) -> dict:
    """Everything besides the recipe that changes a trial's numbers."""
    env = ctx.get("environment") or {}
    ev = asdict(recipe.eval)
    return {
        "model": ctx.get("fingerprint"), "task": ctx.get("task"), "device": ctx.get("device"),
        "device_name": env.get("device_name"), "cpu": env.get("cpu"), "cpu_count": env.get("cpu_count"),
        "torch_threads": env.get("torch_threads"), "cuda": env.get("cuda"), "torch": env.get("torch"),
        "transformers": env.get("transformers"), "torchao": env.get("torchao"), "optbench": env.get("optbench"),
        "python": env.get("python"), "trust_remote_code": recipe.model.trust_remote_code,
        "revision": recipe.model.revision, "bench": asdict(recipe.bench), "eval": ev,
        "eval_data": ctx.get("eval_digest"),  # sha256 of the evaluated text: a source name can change content
    }


def trial_key(ctx: dict, recipe: Recipe, steps: list[dict], selftest: str | None = None) -> str:
    return cache.key({"schema": TRIAL_SCHEMA, "kind": "trial", **context_key_parts(ctx, recipe),
                      "recipe": [[s["name"], s["params"]] for s in steps], "selftest": selftest})


def baseline_key(ctx: dict, recipe: Recipe) -> str:
    return cache.key({"schema": TRIAL_SCHEMA, "kind": "tune-baseline", **context_key_parts(ctx, recipe)})


def cache_load(key: str) -> dict | None:
    path = trials_dir() / f"{key}.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # missing or damaged: a miss, never an error
    return doc if isinstance(doc, dict) and doc.get("schema") == TRIAL_SCHEMA else None


def cache_save(key: str, doc: dict) -> None:
    atomic.write_json(trials_dir() / f"{key}.json", jsonable({"schema": TRIAL_SCHEMA, **doc}))
