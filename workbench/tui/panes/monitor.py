"""Monitor pane: the job's CPU % and RSS, system memory, and per GPU utilisation, memory, power and temperature,
each with a sparkline of recent history. Samples are appended as they arrive; the pane redraws at most twice a
second (a newer sample simply replaces what a pending redraw would have shown).
"""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Sparkline, Static

from workbench.tui import fmt

HISTORY = 120  # samples kept per series
REDRAW_S = 0.5


def _pct(v) -> str:
    return fmt.NA if v is None else f"{v:.0f}%"


class Meter(Horizontal):
    """A label with the latest reading and a sparkline of the history."""

    def __init__(self, key: str, **kw) -> None:
        super().__init__(classes="meter", **kw)
        self.key = key

    def compose(self) -> ComposeResult:
        yield Static(classes="meter-label")
        yield Sparkline([], classes="meter-spark")

    def show(self, label: Text | str, history) -> None:
        self.query_one(".meter-label", Static).update(label)
        self.query_one(Sparkline).data = [0.0 if v is None else v for v in history] or [0.0]


class MonitorPane(Vertical):
    BORDER_TITLE = "Monitor (job process)"

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.series: dict[str, deque] = {}
        self.last: dict | None = None
        self.count = 0
        self._dirty = False
        self._gpu_meters: set[int] = set()

    def compose(self) -> ComposeResult:
        yield Static(Text("No job running: readings appear while a run measures.", style="dim"), id="mon-status")
        yield Meter("cpu", id="m-cpu")
        yield Meter("rss", id="m-rss")
        yield Meter("sysmem", id="m-sysmem")
        yield Vertical(id="mon-gpus")

    def on_mount(self) -> None:
        self.set_interval(REDRAW_S, self.redraw_if_dirty)

    def _push(self, key: str, value) -> None:
        self.series.setdefault(key, deque(maxlen=HISTORY)).append(value)

    def reset(self) -> None:
        self.series.clear()
        self.last = None
        self.count = 0
        self._dirty = True

    def add_sample(self, s: dict) -> None:
        self._push("cpu", s.get("cpu_percent"))
        self._push("rss", s.get("rss_mb"))
        self._push("sysmem", s.get("sys_mem_used_mb"))
        for g in s.get("gpus") or []:
            i = g.get("index", 0)
            self._push(f"gpu{i}.util", g.get("util_percent"))
            self._push(f"gpu{i}.mem", g.get("mem_used_mb"))
            self._push(f"gpu{i}.power", g.get("power_w"))
            self._push(f"gpu{i}.temp", g.get("temp_c"))
        self.last = s
        self.count += 1
        self._dirty = True

    def set_status(self, text: str, style: str = "dim") -> None:
        self.query_one("#mon-status", Static).update(Text(text, style=style))

    def redraw_if_dirty(self) -> None:
        # Hidden (another tab shown): keep the readings, draw them when the pane is back on screen, so a busy run
        # does not spend the UI's time on sparklines nobody sees while the user works elsewhere.
        if self._dirty and self.is_on_screen:
            self._dirty = False
            self.redraw()

    def redraw(self) -> None:
        s = self.last
        if s is None:
            for m in self.query(Meter):
                m.show(Text(f"{m.key}: {fmt.NA}", style="dim"), [])
            return
        self.query_one("#m-cpu", Meter).show(
            Text.assemble(("CPU ", "bold"), f"job {_pct(s.get('cpu_percent'))}",
                          (" sys ", "dim"), _pct(s.get("system_cpu_percent"))), self.series["cpu"])
        self.query_one("#m-rss", Meter).show(
            Text.assemble(("RSS ", "bold"), f"job {fmt.mb(s.get('rss_mb'))}"), self.series["rss"])
        used, total = s.get("sys_mem_used_mb"), s.get("sys_mem_total_mb")
        self.query_one("#m-sysmem", Meter).show(
            Text.assemble(("MEM ", "bold"), f"sys {fmt.mb(used)}/{fmt.mb(total)}"), self.series["sysmem"])
        gpus = s.get("gpus") or []
        box = self.query_one("#mon-gpus", Vertical)
        for g in gpus:
            i = g.get("index", 0)
            if i not in self._gpu_meters:
                self._gpu_meters.add(i)
                box.mount(Meter(f"gpu{i}.util", id=f"m-gpu{i}-util"), Meter(f"gpu{i}.mem", id=f"m-gpu{i}-mem"))
                continue  # shown on the next redraw, once mounted
            name = (g.get("name") or f"GPU {i}")[:24]
            self.query_one(f"#m-gpu{i}-util", Meter).show(
                Text.assemble((f"GPU{i} ", "bold"), f"{name} util {_pct(g.get('util_percent'))}",
                              ("  ", ""), f"{fmt.num(g.get('power_w'), 0, 'W')} · {fmt.num(g.get('temp_c'), 0, '°C')}"),
                self.series[f"gpu{i}.util"])
            self.query_one(f"#m-gpu{i}-mem", Meter).show(
                Text.assemble((f"GPU{i} ", "bold"),
                              f"memory {fmt.mb(g.get('mem_used_mb'))} / {fmt.mb(g.get('mem_total_mb'))}"),
                self.series[f"gpu{i}.mem"])
        if not gpus and -1 not in self._gpu_meters:
            box.remove_children()
            self._gpu_meters = {-1}
            box.mount(Static(Text("GPU: none reported by NVML", style="dim")))
