"""Sessions screen: every saved session with its model, date, runs and best speedup; open, rename, delete."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from workbench.core.errors import InputError
from workbench.core.session import SessionStore, check_name
from workbench.tui import fmt, keys
from workbench.tui.screens.dialogs import ConfirmDialog, PromptDialog


class SessionRenamed(Message):
    """Posted to the app so it can follow a rename of the session it has open."""

    def __init__(self, old: str, new: str) -> None:
        super().__init__()
        self.old, self.new = old, new


class SessionDeleted(Message):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


def short_date(iso: str) -> str:
    return iso.replace("T", " ")[:16] if iso else fmt.NA


class SessionsScreen(Screen[str | None]):
    """Dismisses with the name of the session to open, or None."""

    BINDINGS = keys.bindings(keys.SESSIONS)

    def __init__(self, store: SessionStore, busy: set[str] | None = None) -> None:
        super().__init__(id="sessions-screen")
        self.store = store
        self.busy = busy or set()  # sessions a running job writes to: no rename or delete

    def compose(self) -> ComposeResult:
        yield Static(Text.assemble(("Sessions", "bold"), ("  enter open · n rename · d delete · esc back", "dim")),
                     id="sessions-title")
        yield DataTable(id="sessions-table", cursor_type="row", zebra_stripes=True)
        yield Static(id="sessions-empty")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("name", "model", "created", "runs", "best", "model kept")
        self.reload()
        table.focus()

    def reload(self, select: str | None = None) -> None:
        table = self.query_one(DataTable)
        table.clear()
        rows = self.store.list()
        for row in rows:
            if row.get("error"):
                table.add_row(row["name"], Text(row["error"][:60], style="red"), "", "", "", "", key=row["name"])
                continue
            best = row.get("best_speedup")
            model = str(row.get("model", ""))
            width = 22 if self.app.size.width < 110 else 44
            model = model if len(model) <= width else "…" + model[-(width - 1):]
            table.add_row(row["name"], model, short_date(row.get("created", "")),
                          str(row.get("runs", 0)),
                          Text(fmt.ratio(best), style="green" if best and best >= 1 else ""),
                          "yes" if row.get("artifact") else "no", key=row["name"])
        self.query_one("#sessions-empty", Static).update(
            Text(f"No sessions yet in {self.store.root.name}/: a run creates one and autosaves each result.",
                 style="dim") if not rows else "")
        if select is not None:
            names = [r["name"] for r in rows]
            if select in names:
                table.move_cursor(row=names.index(select))

    def selected(self) -> str | None:
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        return key.value

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open_session()

    def action_open_session(self) -> None:
        name = self.selected()
        if name:
            self.dismiss(name)

    def action_close(self) -> None:
        self.dismiss(None)

    def action_rename_session(self) -> None:
        name = self.selected()
        if not name:
            return
        if name in self.busy:
            self.notify(f"session {name} is being written by a running job; rename it when the run ends",
                        severity="warning")
            return

        def check(new: str) -> str | None:
            try:
                check_name(new)
            except InputError as exc:
                return exc.message
            if new != name and self.store.exists(new):
                return f"session {new!r} already exists"
            return None

        def done(new: str | None) -> None:
            if not new or new == name:
                return
            try:
                self.store.rename(name, new)
            except InputError as exc:
                self.notify(exc.message, severity="error", title="Rename failed")
                return
            self.app.post_message(SessionRenamed(name, new))
            self.notify(f"renamed {name} → {new}")
            self.reload(select=new)

        self.app.push_screen(PromptDialog(f"Rename session {name} to:", name, check), done)

    def action_delete_session(self) -> None:
        name = self.selected()
        if not name:
            return
        if name in self.busy:
            self.notify(f"session {name} is being written by a running job; cancel the run first",
                        severity="warning")
            return

        def done(yes: bool | None) -> None:
            if not yes:
                return
            try:
                self.store.delete(name)
            except InputError as exc:
                self.notify(exc.message, severity="error", title="Delete failed")
                return
            self.app.post_message(SessionDeleted(name))
            self.notify(f"deleted session {name}")
            self.reload()

        self.app.push_screen(ConfirmDialog(f"Delete session {name!r}, its results and its saved model?",
                                           yes="Delete", no="Keep", danger=True), done)
