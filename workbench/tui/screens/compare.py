"""Compare screen: one row per run of the session (its recipe and results), the baseline pinned on top, sortable
by speedup, p50, memory, size and accuracy delta; mark two rows to see them side by side."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from workbench.core import optimizations
from workbench.core.errors import InputError
from workbench.tui import fmt, keys

SORTS = {  # key -> (label, function of a row giving the sort value, descending?)
    "speedup": ("speedup", lambda r: r.get("speedup"), True),
    "p50": ("p50", lambda r: _phase(r).get("latency_ms", {}).get("p50"), False),
    "memory": ("peak memory", lambda r: (_phase(r).get("memory_mb") or {}).get("rss_peak"), False),
    "size": ("size", lambda r: _phase(r).get("model_size_mb"), False),
    "accuracy": ("accuracy loss", None, False),
}


def _phase(run: dict) -> dict:
    return run.get("optimized") or {}


def baseline_row(baseline: dict, runs: list[dict]) -> dict:
    """The session's baseline as a row shaped like a run (speedup 1, no accuracy change), with the metrics the runs
    compare (not bookkeeping such as tokens scored)."""
    compared = {k: e for r in runs for k, e in (r.get("accuracy") or {}).items()}
    metrics = {k: v for k, v in (baseline.get("metrics") or {}).items()
               if k in compared and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {"id": "baseline", "optimizations": [], "optimized": baseline, "speedup": 1.0, "size_ratio": 1.0,
            "accuracy": {k: {"value": v, "baseline": v, "delta": 0.0,
                             "higher_is_better": compared[k].get("higher_is_better", True)}
                         for k, v in metrics.items()}}


def primary_metric(runs: list[dict]) -> str | None:
    for r in runs:
        if r.get("accuracy"):
            return next(iter(r["accuracy"]))
    return None


def _changed(name: str, params: dict) -> dict:
    """Only the parameters that differ from the registry's defaults (reports carry every resolved value)."""
    try:
        spec = optimizations.get(name)
    except InputError:
        return dict(params)
    out = {}
    for k, v in params.items():
        p = spec.param(k)
        if p is None or p.default != v:
            out[k] = v
    return out


def opts_text(run: dict) -> str:
    if run.get("id") == "baseline":
        return "baseline (no optimizations)"
    parts = []
    for o in run.get("optimizations") or []:
        params = ",".join(f"{k}={v}" for k, v in _changed(o["name"], o.get("params") or {}).items())
        parts.append(o["name"] + (f":{params}" if params else ""))
    return " → ".join(parts) or "baseline only"


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


class CompareScreen(Screen[None]):
    BINDINGS = keys.bindings(keys.COMPARE)

    def __init__(self, session_name: str, runs: list[dict], baseline: dict | None, budget_pct: float = 1.0) -> None:
        super().__init__(id="compare-screen")
        self.session_name = session_name
        self.runs = list(runs)
        self.baseline = baseline_row(baseline, self.runs) if baseline else None
        self.metric = primary_metric(self.runs)
        self.budget_pct = budget_pct
        self.sort_key: str | None = None
        self.marked: list[str] = []

    def compose(self) -> ComposeResult:
        yield Static(id="compare-title")
        yield DataTable(id="compare-table", cursor_type="row", zebra_stripes=True)
        with VerticalScroll(id="compare-detail-box"):
            yield Static(id="compare-detail")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_column("", key="mark")
        table.add_column("run", key="run")
        table.add_column("optimizations", key="opts")
        table.add_column("speedup", key="speedup")
        table.add_column("p50 ms", key="p50")
        table.add_column("p99 ms", key="p99")
        table.add_column("thrpt", key="thr")
        table.add_column("peak RSS", key="mem")
        table.add_column("size", key="size")
        table.add_column(f"Δ {clip(self.metric, 12)}" if self.metric else "Δ acc", key="acc")
        self.rebuild()
        table.focus()

    # ---- rows
    def _rows(self) -> list[dict]:
        runs = list(self.runs)
        if self.sort_key:
            label, fn, desc = SORTS[self.sort_key]
            if self.sort_key == "accuracy":
                fn = self._loss
            present = [r for r in runs if fn(r) is not None]
            missing = [r for r in runs if fn(r) is None]
            runs = sorted(present, key=fn, reverse=desc) + missing
        return ([self.baseline] if self.baseline else []) + runs

    def _loss(self, run: dict) -> float | None:
        entry = (run.get("accuracy") or {}).get(self.metric) if self.metric else None
        return fmt.worse_fraction(entry) if entry else None

    @staticmethod
    def row_key(run: dict) -> str:
        return str(run.get("id"))

    def rebuild(self) -> None:
        table = self.query_one(DataTable)
        keep = table.cursor_row if table.row_count else 0
        table.clear()
        for run in self._rows():
            ph = _phase(run)
            key = self.row_key(run)
            entry = (run.get("accuracy") or {}).get(self.metric) if self.metric else None
            status = fmt.budget_status(entry, self.budget_pct) if entry else "unknown"
            speed = run.get("speedup")
            thr = ph.get("throughput") or {}
            table.add_row(
                "●" if key in self.marked else ("▲" if key == "baseline" else ""),
                Text(key, style="bold" if key == "baseline" else ""),
                clip(opts_text(run), 24 if self.app.size.width < 110 else 44),
                Text(fmt.ratio(speed), style="green" if speed and speed > 1.0 and key != "baseline" else ""),
                fmt.num((ph.get("latency_ms") or {}).get("p50")),
                fmt.num((ph.get("latency_ms") or {}).get("p99")),
                fmt.num(thr.get("value"), 1),
                fmt.mb((ph.get("memory_mb") or {}).get("rss_peak")),
                fmt.mb(ph.get("model_size_mb")),
                Text(fmt.signed(entry.get("delta")) if entry else fmt.NA, style=fmt.STATUS_STYLE[status]),
                key=key,
            )
        if table.row_count:
            table.move_cursor(row=min(keep, table.row_count - 1))
        sort = f" · sorted by {SORTS[self.sort_key][0]}" if self.sort_key else ""
        self.query_one("#compare-title", Static).update(Text.assemble(
            ("Compare ", "bold"), (self.session_name, "cyan"), f" · {len(self.runs)} run(s){sort}",
            ("  space marks two rows · s p m z a sort · esc back", "dim")))
        self.show_detail()

    # ---- actions
    def action_sort(self, key: str) -> None:
        self.sort_key = key
        self.rebuild()

    def action_mark(self) -> None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        if key in self.marked:
            self.marked.remove(key)
        else:
            self.marked.append(key)
            self.marked = self.marked[-2:]
        self.rebuild()

    def action_close(self) -> None:
        self.dismiss(None)

    def _by_key(self, key: str) -> dict | None:
        return next((r for r in self._rows() if self.row_key(r) == key), None)

    def show_detail(self) -> None:
        detail = self.query_one("#compare-detail", Static)
        if len(self.marked) < 2:
            n = len(self.marked)
            detail.update(Text(f"{n} of 2 rows marked: mark two rows (space) to compare them side by side.",
                               style="dim"))
            return
        a, b = (self._by_key(k) for k in self.marked)
        if a is None or b is None:
            detail.update("")
            return
        detail.update(side_by_side(a, b, self.budget_pct))


def side_by_side(a: dict, b: dict, budget_pct: float) -> Table:
    t = Table(title="side by side", title_justify="left", box=None, padding=(0, 2), show_edge=False)
    t.add_column("")
    t.add_column(f"run {a.get('id')}", style="blue")
    t.add_column(f"run {b.get('id')}", style="magenta")
    t.add_column("B / A", justify="right")
    pa, pb = _phase(a), _phase(b)

    def stat(ph, key, q="p50"):
        return (ph.get(key) or {}).get(q)

    rows = [
        ("optimizations", opts_text(a), opts_text(b), None, None),
        ("speedup", fmt.ratio(a.get("speedup")), fmt.ratio(b.get("speedup")), a.get("speedup"), b.get("speedup")),
    ]
    for label, key, q in (("p50 ms", "latency_ms", "p50"), ("p90 ms", "latency_ms", "p90"),
                          ("p99 ms", "latency_ms", "p99"), ("TTFT p50 ms", "ttft_ms", "p50"),
                          ("decode ms/tok p50", "decode_ms_per_token", "p50")):
        va, vb = stat(pa, key, q), stat(pb, key, q)
        if va is not None or vb is not None:
            rows.append((label, fmt.num(va), fmt.num(vb), va, vb))
    ta, tb = (pa.get("throughput") or {}).get("value"), (pb.get("throughput") or {}).get("value")
    rows.append((f"throughput ({(pa.get('throughput') or {}).get('unit', '')})", fmt.num(ta, 1), fmt.num(tb, 1),
                 ta, tb))
    ma, mb_ = (pa.get("memory_mb") or {}).get("rss_peak"), (pb.get("memory_mb") or {}).get("rss_peak")
    rows.append(("peak RSS", fmt.mb(ma), fmt.mb(mb_), ma, mb_))
    sa, sb = pa.get("model_size_mb"), pb.get("model_size_mb")
    rows.append(("model size", fmt.mb(sa), fmt.mb(sb), sa, sb))
    rows.append(("dtype", str(pa.get("dtype", fmt.NA)), str(pb.get("dtype", fmt.NA)), None, None))
    for metric in dict.fromkeys(list(a.get("accuracy") or {}) + list(b.get("accuracy") or {})):
        ea, eb = (a.get("accuracy") or {}).get(metric, {}), (b.get("accuracy") or {}).get(metric, {})
        cells = []
        for e in (ea, eb):
            if not e:
                cells.append(Text(fmt.NA, style="dim"))
                continue
            st = fmt.budget_status(e, budget_pct)
            cells.append(Text(f"{fmt.sig(e.get('value'))} ({fmt.signed(e.get('delta'), 3)})",
                              style=fmt.STATUS_STYLE[st]))
        rows.append((metric, cells[0], cells[1], ea.get("value"), eb.get("value")))
    for label, ca, cb, va, vb in rows:
        ratio = f"{vb / va:.2f}×" if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and va else ""
        t.add_row(label, ca, cb, ratio)
    return t
