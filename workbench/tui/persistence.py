"""Where the app's results go: the open session, autosave on arrival, save-as, open, and the tune's report.

The App asks and tells; this keeps the rules (one session holds one model; a run autosaves into the session it
started with; a session a run is writing to is not renamed under it). Every write goes through ``core.session``,
which writes atomically. Errors are ``InputError``s for the App to show.
"""

from __future__ import annotations

import re
from datetime import datetime

from workbench.core.errors import InputError
from workbench.core.recipe import Recipe
from workbench.core.session import Session, SessionStore, check_name


class SessionKeeper:
    def __init__(self, store: SessionStore) -> None:
        self.store = store
        self.current: Session | None = None

    def auto_name(self, ref: str) -> str:
        """The model's last path part and the time, made unique in the store."""
        stem = re.sub(r"[^A-Za-z0-9._-]", "-", ref.rstrip("/").split("/")[-1].split(":")[-1]).strip("-.") or "model"
        base = f"{stem[:40]}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        name, i = base, 2
        while self.store.exists(name):
            name, i = f"{base}-{i}", i + 1
        return name

    def model_changed(self, ref: str) -> None:
        """A session holds one model: after loading another, the next run starts a new session."""
        if self.current is not None and self.current.recipe.model.ref != ref:
            self.current = None

    def for_run(self, recipe: Recipe) -> tuple[Session, bool]:
        """The open session with ``recipe`` saved into it, or a new one named after the model; (session, created)."""
        s = self.current
        if s is not None and s.recipe.model.ref == recipe.model.ref and self.store.exists(s.name):
            s.recipe = recipe
            s.save()
            return s, False
        self.current = self.store.create(self.auto_name(recipe.model.ref), recipe, {})
        return self.current, True

    @staticmethod
    def record_run(session: Session, report: dict) -> int:
        """Autosave a run's final report into ``session``; returns the run's number."""
        run_id = len(session.results.get("runs", [])) + 1
        session.environment = report.get("environment") or session.environment
        session.save()
        session.add_run({"id": run_id, **report})
        return run_id

    def name_problem(self, name: str) -> str | None:
        """Why ``name`` cannot be the open session's new name, or None."""
        try:
            check_name(name)
        except InputError as exc:
            return exc.message
        current = self.current.name if self.current else None
        if name != current and self.store.exists(name):
            return f"session {name!r} already exists; pick another name"
        return None

    def save_as(self, name: str, recipe: Recipe, writing: Session | None = None) -> Session:
        """Save the setup as session ``name`` (renaming the open one); ``writing`` is the session a run writes to."""
        if self.current is None:
            self.current = self.store.create(name, recipe, {})
            return self.current
        if name != self.current.name:
            if writing is self.current:
                raise InputError("a run is writing to this session: rename it when the run ends")
            self.store.rename(self.current.name, name)
            self.current = self.store.open(name)
        self.current.recipe = recipe
        self.current.save()
        return self.current

    def open(self, name: str) -> Session:
        return self.store.open(name)

    def record_tune(self, report: dict, base: Recipe, shown_ref: str | None) -> Session:
        """The tune's report into the session's ``tunes`` and its chosen recipe as the session's recipe, as
        ``optbench tune --session`` does: the open session when it holds this model, else a new one (which becomes
        the open one when the model is still the one shown)."""
        ref = base.model.ref
        s = self.current
        if s is None or s.recipe.model.ref != ref or not self.store.exists(s.name):
            s = self.store.create(self.auto_name(ref), Recipe(base.model, [], base.bench, base.eval, base.device),
                                  report.get("environment"))
            if shown_ref == ref:
                self.current = s
        if report.get("chosen_recipe"):
            s.recipe = Recipe.from_dict(report["chosen_recipe"], where="the tune's chosen recipe")
        s.environment = report.get("environment") or s.environment
        s.save()
        s.add_tune(report)
        return s

    def renamed(self, old: str, new: str) -> None:
        if self.current is not None and self.current.name == old:
            self.current = self.store.open(new)

    def deleted(self, name: str) -> None:
        if self.current is not None and self.current.name == name:
            self.current = None
