"""Every key of the app as data: one row per action with a stable id, so users can remap keys and the help
screen, the footer and the command palette all read the same table.

Letters are quick; each main action also has a function key, which works while a text field has the focus (a
field takes the letters). Remap keys in ``keymap.toml`` in the config folder (see the help screen)::

    [keys]
    "optbench.run" = "f5"
    "optbench.cancel" = "f6,x"
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True)
class Key:
    id: str  # stable: used by keymap.toml
    key: str  # Textual key names, comma-separated for several
    action: str  # the Textual action run (on the screen that owns the key)
    description: str  # footer label
    help: str  # one line for the help screen and the command palette
    show: bool = True  # shown in the footer
    palette: bool = True  # offered by the command palette (main screen keys only)


MAIN = (
    Key("optbench.model", "l", "focus_model", "Model", "Type a model: demo name, folder, .gguf file or Hugging Face id",
        show=False),
    Key("optbench.inspect", "i", "inspect", "Inspect", "Load the model in a job to read parameters, dtype and size",
        show=False),
    Key("optbench.run", "r,f5", "run", "Run", "Start a run: baseline, apply the optimizations, measure again"),
    Key("optbench.cancel", "x,f6", "cancel", "Cancel",
        "Cancel the running job, export or tune (within 2 s; shown while one runs)"),
    Key("optbench.save", "s,f2", "save", "Save", "Save the session under a name (results are autosaved as they arrive)"),
    Key("optbench.sessions", "o,f3", "sessions", "Open", "Open, rename or delete a saved session"),
    Key("optbench.compare", "c,f4", "compare", "Compare", "Compare every run of this session; pick two side by side"),
    Key("optbench.export", "e,f7", "export", "Export", "Export this session's optimized model to a folder and verify it"),
    Key("optbench.tune", "t,f8", "tune", "Tune",
        "Open the tune screen: search for the best recipe within an accuracy budget, live Pareto frontier"),
    Key("optbench.tab_setup", "1", "show_tab('setup')", "Setup", "Show the setup tab (model, optimizations)",
        show=False),
    Key("optbench.tab_run", "2", "show_tab('run')", "Live", "Show the live tab (progress, monitor, log)", show=False),
    Key("optbench.tab_results", "3", "show_tab('results')", "Results",
        "Show the results tab (latency, throughput, accuracy)", show=False),
    Key("optbench.help", "question_mark,f1", "help", "Help", "Keys, panes and remote use"),
    Key("optbench.quit", "q,f10", "quit", "Quit", "Quit (asks first while a job or a tune runs)"),
)

SESSIONS = (
    Key("sessions.open", "enter", "open_session", "Open", "Open the selected session", palette=False),
    Key("sessions.rename", "n", "rename_session", "Rename", "Rename the selected session", palette=False),
    Key("sessions.delete", "d", "delete_session", "Delete", "Delete the selected session (asks first)",
        palette=False),
    Key("sessions.close", "escape", "close", "Back", "Back to the workbench", palette=False),
)

COMPARE = (
    Key("compare.mark", "space", "mark", "Mark", "Mark or unmark the row (two marked rows compare side by side)",
        palette=False),
    Key("compare.sort_speedup", "s", "sort('speedup')", "Speedup", "Sort by speedup", palette=False),
    Key("compare.sort_p50", "p", "sort('p50')", "p50", "Sort by p50 latency", palette=False),
    Key("compare.sort_memory", "m", "sort('memory')", "Memory", "Sort by peak memory", palette=False),
    Key("compare.sort_size", "z", "sort('size')", "Size", "Sort by model size", palette=False),
    Key("compare.sort_accuracy", "a", "sort('accuracy')", "Acc Δ", "Sort by accuracy delta", palette=False),
    Key("compare.close", "escape", "close", "Back", "Back to the workbench", palette=False),
)

TUNE = (  # the tune screen; the actions are the app's, so the command palette offers them from anywhere
    Key("tune.start", "r,f5", "tune_start", "Start tune",
        "Tune: start a search for the loaded model with the tune form's objective and budgets"),
    Key("tune.cancel", "x,f6", "tune_cancel", "Cancel tune", "Tune: cancel the running tune (its worker stops within 2 s)"),
    Key("tune.apply", "a,f9", "tune_apply", "Apply best",
        "Tune: put the best recipe's optimizations into Setup (then run, save and export as usual)"),
    Key("tune.export", "e,f7", "tune_export", "Export best",
        "Tune: apply the best recipe, run it keeping the model, then export and verify it"),
    Key("tune.view", "f", "cycle_view", "View", "Tune: cycle the table: trials run · frontier · everything",
        palette=False),
    Key("tune.close", "escape", "close", "Back", "Back to the workbench (a running tune keeps going)", palette=False),
)

DIALOG = (
    Key("dialog.cancel", "escape", "cancel", "Cancel", "Close the dialog without doing anything", palette=False),
)

GROUPS = (("Workbench", MAIN), ("Tune screen", TUNE), ("Sessions screen", SESSIONS), ("Compare screen", COMPARE),
          ("Dialogs", DIALOG))


def bindings(keys: tuple[Key, ...]) -> list[Binding]:
    return [Binding(k.key, k.action, k.description, show=k.show, id=k.id) for k in keys]


def display_key(key: str) -> str:
    names = {"question_mark": "?", "escape": "esc", "space": "space", "enter": "enter"}
    return " / ".join(names.get(part, part) for part in key.split(","))


def all_ids() -> set[str]:
    return {k.id for _, group in GROUPS for k in group}
