"""Help screen (? or F1): every key from the key table, what each pane shows, and how to use optbench remotely."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from workbench.tui import keys

PANES = (
    ("Model", "type a demo name, folder, .gguf file or Hugging Face id (tab completes paths); what is known "
              "without torch shows at once, parameters and size after a background inspect job"),
    ("Optimizations", "one panel per family from the registry; toggles, typed parameters checked as you type, "
                      "the apply order, and why a combination is not allowed"),
    ("Run settings", "device, bench and eval settings, the accuracy budget, keeping the model for export"),
    ("Progress · Log", "each stage of the run and the job's log"),
    ("Monitor", "job CPU % and RSS, system memory, per GPU utilisation, memory, power, temperature"),
    ("Latency", "histogram of timed calls, baseline and optimized overlaid, p50/p90/p99 marked; TTFT and "
                "decode per token for causal LMs"),
    ("Throughput", "throughput of each timed call over the run, with each phase's aggregate"),
    ("Accuracy", "metric, baseline, delta; green no loss, yellow within budget, red over budget"),
    ("Tune (t)", "objective, accuracy budget (1% · 0.01 · ppl=2%,cosine=0.01), memory cap, time budget, "
                 "optimizations; every trial plotted as accuracy budget used vs gain with the Pareto frontier and "
                 "the budget line; the table of trials or frontier recipes; the best is saved into the session"),
)

REMOTE = """\
Over SSH: ssh -t host optbench   (-t gives it a terminal; 80×24 is enough; add --no-mouse if mouse capture
gets in the way). In tmux or screen: run optbench inside a session; detach and reattach freely — a run keeps
going in its own job process, and results are autosaved. In a browser: on the remote machine run
  python -m workbench.tui.serve --port 8000     (needs textual-serve; binds 127.0.0.1 only)
then on your machine  ssh -L 8000:127.0.0.1:8000 host  and open http://127.0.0.1:8000.
Keys can be remapped in keymap.toml in the config folder ($OPTBENCH_CONFIG_DIR, else the platform's user config
folder, e.g. ~/.config/optbench):  [keys]  "optbench.run" = "f5"."""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark,f1", "close", "Close", id="help.close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body", classes="dialog"):
            yield Static(self._content(), id="help-text")

    def _content(self) -> Group:
        overrides = getattr(self.app, "keymap_overrides", {}) or {}
        parts = [Text("optbench — keys", style="bold underline")]
        for title, group in keys.GROUPS:
            t = Table(title=title, title_justify="left", title_style="bold", box=None, padding=(0, 2),
                      show_header=False)
            t.add_column(style="cyan", no_wrap=True, min_width=12)
            t.add_column()
            for k in group:
                t.add_row(keys.display_key(overrides.get(k.id, k.key)), k.help)
            if title == "Workbench":
                t.add_row("ctrl+p", "Command palette: every action, toggle any optimization, load a demo")
            parts.append(t)
        panes = Table(title="Panes", title_justify="left", title_style="bold", box=None, padding=(0, 2),
                      show_header=False)
        panes.add_column(style="cyan", no_wrap=True)
        panes.add_column()
        for name, text in PANES:
            panes.add_row(name, text)
        parts += [panes, Text("Remote use", style="bold"), Text(REMOTE), Text("esc closes", style="dim")]
        return Group(*parts)

    def action_close(self) -> None:
        self.dismiss(None)
