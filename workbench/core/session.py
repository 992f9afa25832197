"""Sessions: a folder with a human-readable session.toml, results.json and an optional artifact/.

Torch-free. No pickle anywhere. Writes are atomic; a file that cannot be parsed is reported and never overwritten;
a session name cannot leave the sessions folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import tomli_w

from workbench.core import atomic
from workbench.core.errors import SessionError
from workbench.core.recipe import Recipe

SCHEMA = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def default_root() -> Path:
    return Path(os.environ.get("OPTBENCH_SESSIONS") or Path.cwd() / "sessions")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise SessionError(f"session name {name!r}: not allowed; expected 1-64 letters, digits, '.', '_' or '-' "
                           f"(no path separators, no '..')")
    return name


def _strip_none(obj):
    if isinstance(obj, dict):
        return {k: _strip_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_strip_none(v) for v in obj]
    return obj


@dataclass
class Session:
    name: str
    dir: Path
    recipe: Recipe
    environment: dict = field(default_factory=dict)
    created: str = ""
    results: dict = field(default_factory=lambda: {"schema": SCHEMA, "runs": []})

    @property
    def toml_path(self) -> Path:
        return self.dir / "session.toml"

    @property
    def results_path(self) -> Path:
        return self.dir / "results.json"

    @property
    def artifact_dir(self) -> Path:
        return self.dir / "artifact"

    def to_toml(self) -> str:
        doc = {"schema": SCHEMA, "name": self.name, "created": self.created, **self.recipe.to_dict(),
               "environment": self.environment}
        return tomli_w.dumps(_strip_none(doc))

    def save(self) -> None:
        self._refuse_if_corrupt(self.toml_path, tomllib.loads)
        atomic.write_text(self.toml_path, self.to_toml())

    def add_run(self, report: dict) -> None:
        """Append one run's report to results.json (atomically). The first run's baseline is kept as ``baseline``."""
        self._refuse_if_corrupt(self.results_path, json.loads)
        self.results.setdefault("runs", []).append(report)
        if report.get("baseline"):
            self.results["baseline"] = report["baseline"]
        atomic.write_json(self.results_path, self.results)

    def add_tune(self, report: dict) -> None:
        """Append one tune's report to results.json's ``tunes`` (atomically)."""
        self._refuse_if_corrupt(self.results_path, json.loads)
        self.results.setdefault("tunes", []).append(report)
        atomic.write_json(self.results_path, self.results)

    def _refuse_if_corrupt(self, path: Path, parse) -> None:
        if path.exists():
            try:
                parse(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as exc:
                raise SessionError(f"{path}: cannot be parsed ({exc}); fix or remove it, it was not overwritten")

    def summary(self) -> dict:
        runs = self.results.get("runs", [])
        speedups = [r.get("speedup") for r in runs if isinstance(r.get("speedup"), (int, float))]
        return {
            "name": self.name,
            "model": self.recipe.model.ref,
            "created": self.created,
            "runs": len(runs),
            "best_speedup": max(speedups) if speedups else None,
            "optimizations": [s.name for s in self.recipe.optimizations],
            "artifact": self.artifact_dir.is_dir(),
        }


class SessionStore:
    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root else default_root()

    def path(self, name: str) -> Path:
        check_name(name)
        root = self.root.resolve()
        path = (root / name).resolve()
        if path.parent != root:
            raise SessionError(f"session name {name!r}: escapes the sessions folder {root}")
        return path

    def exists(self, name: str) -> bool:
        return (self.path(name) / "session.toml").is_file()

    def create(self, name: str, recipe: Recipe, environment: dict | None = None) -> Session:
        path = self.path(name)
        session = Session(name, path, recipe, environment or {},
                          created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        path.mkdir(parents=True, exist_ok=True)
        session.save()
        return session

    def open(self, name: str) -> Session:
        path = self.path(name)
        toml_path = path / "session.toml"
        if not toml_path.is_file():
            raise SessionError(f"session {name!r}: not found in {self.root} (no {toml_path.name})")
        try:
            doc = tomllib.loads(toml_path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SessionError(f"{toml_path}: cannot be parsed ({exc}); expected a session.toml written by optbench")
        if doc.get("schema") != SCHEMA:
            raise SessionError(f"{toml_path}: schema {doc.get('schema')!r} is not supported; expected {SCHEMA}")
        recipe = Recipe.from_dict(doc, where=str(toml_path))
        session = Session(name, path, recipe, doc.get("environment") or {}, str(doc.get("created", "")))
        results_path = path / "results.json"
        if results_path.exists():
            try:
                results = json.loads(results_path.read_text(encoding="utf-8"))
                if not isinstance(results, dict) or not isinstance(results.get("runs", []), list):
                    raise ValueError("expected an object with a 'runs' list")
            except (ValueError, UnicodeDecodeError) as exc:
                raise SessionError(f"{results_path}: cannot be parsed ({exc}); expected results written by optbench")
            session.results = results
        return session

    def list(self) -> list[dict]:
        out = []
        if not self.root.is_dir():
            return out
        for child in sorted(self.root.iterdir()):
            if child.is_dir() and (child / "session.toml").is_file() and _NAME.match(child.name):
                try:
                    out.append(self.open(child.name).summary())
                except SessionError as exc:
                    out.append({"name": child.name, "error": exc.message})
        return out

    def delete(self, name: str) -> None:
        path = self.path(name)
        if not (path / "session.toml").is_file():
            raise SessionError(f"session {name!r}: not found in {self.root}")
        shutil.rmtree(path)

    def rename(self, old: str, new: str) -> None:
        src, dst = self.path(old), self.path(new)
        if not (src / "session.toml").is_file():
            raise SessionError(f"session {old!r}: not found in {self.root}")
        if dst.exists():
            raise SessionError(f"session {new!r}: already exists in {self.root}")
        session = self.open(old)
        os.rename(src, dst)
        session.name, session.dir = new, dst
        session.save()
