"""Command palette (ctrl+p): every workbench and tune action from the key table, plus toggling any registered
optimization, loading a demo or recent model, and opening a saved session."""

from __future__ import annotations

from functools import partial
from typing import Callable, Iterator

from textual.command import DiscoveryHit, Hit, Hits, Provider

from workbench.core import optimizations
from workbench.core.modelref import DEMOS
from workbench.tui import keys


def palette_commands(app) -> Iterator[tuple[str, str, Callable]]:
    """(text, help, callback) for everything the palette offers; the app decides what each does."""
    for k in (*keys.MAIN, *keys.TUNE):
        if k.palette:
            yield f"{k.description}  [{keys.display_key(app.keymap_overrides.get(k.id, k.key))}]", k.help, \
                partial(app.run_action, k.action)
    for spec in optimizations.all_specs():
        state = "off" if spec.name in app.wb.enabled else "on"
        yield f"Turn {spec.name} {state}", f"{spec.family}: {spec.summary}", partial(app.toggle_optimization,
                                                                                     spec.name)
    for name in DEMOS:
        yield f"Load demo:{name}", DEMOS[name].title, partial(app.load_model, f"demo:{name}")
    for ref in app.recent:
        if not ref.startswith("demo:"):
            yield f"Load recent model {ref}", "a model you used before", partial(app.load_model, ref)
    for row in app.store.list():
        if not row.get("error"):
            yield f"Open session {row['name']}", f"{row.get('model')} · {row.get('runs')} run(s)", \
                partial(app.open_session, row["name"])


class WorkbenchCommands(Provider):
    async def discover(self) -> Hits:
        for text, help_text, callback in palette_commands(self.app):
            yield DiscoveryHit(text, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for text, help_text, callback in palette_commands(self.app):
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), callback, text=text, help=help_text)
