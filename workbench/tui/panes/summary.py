"""Run summary line: what ran, the speedup, latency, size and memory side by side, and the artifact's state."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from workbench.tui import fmt


def summary_table(report: dict, run_id=None) -> Table:
    base, opt = report.get("baseline") or {}, report.get("optimized") or {}
    opts = ", ".join(o["name"] for o in report.get("optimizations") or []) or "baseline only"
    speed = report.get("speedup")
    export = report.get("export")
    if export is None:
        art = Text("no artifact kept", style="dim")
    elif export.get("verified"):
        art = Text("artifact saved, reload verified", style="green")
    else:
        art = Text(f"artifact not saved: {export.get('error', 'not verified')}", style="yellow")

    def lat(ph):
        return fmt.ms((ph.get("latency_ms") or {}).get("p50"))

    def rss(ph):
        return fmt.mb((ph.get("memory_mb") or {}).get("rss_peak"))

    t = Table.grid(padding=(0, 3))
    t.add_column(ratio=1)
    t.add_column(ratio=1)
    t.add_row(Text.assemble(("run ", "bold"), f"#{run_id} " if run_id is not None else "", (opts, "cyan")),
              Text.assemble(("speedup ", "bold"),
                            (fmt.ratio(speed), "bold green" if speed and speed >= 1 else "bold red"),
                            f"  p50 {lat(base)} → {lat(opt)}"))
    t.add_row(Text.assemble(("size ", "bold"), f"{fmt.mb(base.get('model_size_mb'))} → "
                                               f"{fmt.mb(opt.get('model_size_mb'))} ({fmt.ratio(report.get('size_ratio'))})"),
              Text.assemble(("peak RSS ", "bold"), f"{rss(base)} → {rss(opt)}"))
    t.add_row(Text.assemble(("dtype ", "bold"), f"{base.get('dtype', fmt.NA)} → {opt.get('dtype', fmt.NA)}",
                            f" · {report.get('task', '')} · {report.get('device', '')}"), art)
    capped = capped_phases(report)
    if capped:
        t.add_row(Text(f"⚠ the {' and '.join(capped)} bench hit its time cap (max seconds): fewer timed calls, a "
                       "rougher median", style="yellow"), "")
    for note in batch_caveats(report):
        t.add_row(Text(f"⚠ {note}", style="yellow"), "")
    return t


def batch_caveats(report: dict) -> list[str]:
    """An optimization's measured batch limit (its report's pays_at_batch / batch_note) that this run is above."""
    batch = (report.get("bench") or {}).get("batch") or 1
    return [f"{r.get('name', '?')} at batch {batch}: {r['batch_note']}"
            for r in report.get("optimization_reports") or []
            if r.get("batch_note") and batch > r.get("pays_at_batch", 0)]


def capped_phases(report: dict) -> list[str]:
    """The phases whose bench ended early at its ``max_seconds`` cap."""
    return [name for name in ("baseline", "optimized")
            if (report.get(name) or {}).get("stopped_early") == "max_seconds"]


class SummaryPane(Static):
    BORDER_TITLE = "Result"

    def on_mount(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.update(Text("No result yet: set up a model and optimizations, then press r.", style="dim"))

    def set_running(self, baseline: dict | None = None) -> None:
        if baseline:
            p50 = (baseline.get("latency_ms") or {}).get("p50")
            self.update(Text.assemble(("running… ", "bold cyan"), f"baseline p50 {fmt.ms(p50)}; "
                                      "the optimized model is next"))
        else:
            self.update(Text("running…", style="bold cyan"))

    def set_report(self, report: dict, run_id=None) -> None:
        self.update(summary_table(report, run_id))
