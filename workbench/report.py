"""Rich renderings of reports, sessions and the optimization list for the CLI. (Core never imports this.)"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

console = Console()


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 1e5 else f"{v:.3g}"
    return str(v)


def _stat(phase: dict, key: str, stat: str = "p50"):
    block = phase.get(key)
    return block.get(stat) if isinstance(block, dict) else None


def print_report(r: dict, session: str | None = None) -> None:
    m = r["model"]
    opts = ", ".join(f"{o['name']}({', '.join(f'{k}={v}' for k, v in o['params'].items())})"
                     for o in r["optimizations"]) or "none (baseline only)"
    env = r.get("environment", {})
    console.print(f"[bold]{m['ref']}[/] {m['architecture']} · {m['parameters'] / 1e6:.1f} M params · task "
                  f"{r['task']} · {r['device']} ({env.get('device_name', '')}) · torch {env.get('torch')} · "
                  f"transformers {env.get('transformers')}")
    console.print(f"optimizations: {opts}")
    b, o = r["baseline"], r["optimized"]
    t = Table(show_header=True, header_style="bold")
    for col in ("metric", "baseline", "optimized", "change"):
        t.add_column(col, justify="right" if col != "metric" else "left")

    def row(name, bv, ov, better_low=True, ratio=True):
        if bv is None and ov is None:
            return
        change = ""
        if isinstance(bv, (int, float)) and isinstance(ov, (int, float)) and bv:
            if ratio:
                r_ = bv / ov if better_low else ov / bv
                change = f"{r_:.2f}×"
            else:
                change = f"{ov - bv:+.4f}"
        t.add_row(name, _fmt(bv), _fmt(ov), change)

    row("latency p50 (ms)", _stat(b, "latency_ms"), _stat(o, "latency_ms"))
    row("latency p90 (ms)", _stat(b, "latency_ms", "p90"), _stat(o, "latency_ms", "p90"))
    row("time to first token p50 (ms)", _stat(b, "ttft_ms"), _stat(o, "ttft_ms"))
    row("decode p50 (ms/token)", _stat(b, "decode_ms_per_token"), _stat(o, "decode_ms_per_token"))
    unit = (b.get("throughput") or {}).get("unit", "")
    row(f"throughput ({unit})", b["throughput"]["value"], o["throughput"]["value"], better_low=False)
    row("model size (MB)", b["model_size_mb"], o["model_size_mb"])
    row("RSS peak (MB)", b["memory_mb"]["rss_peak"], o["memory_mb"]["rss_peak"])
    if b["memory_mb"].get("cuda_peak_allocated") is not None:
        row("CUDA peak allocated (MB)", b["memory_mb"]["cuda_peak_allocated"], o["memory_mb"]["cuda_peak_allocated"])
    for name, acc in r.get("accuracy", {}).items():
        row(name, acc["baseline"], acc["value"], ratio=False)
    console.print(t)
    console.print(f"speedup (baseline p50 / optimized p50): [bold]{r['speedup']:.2f}×[/]  ·  size ratio "
                  f"{r['size_ratio']:.2f}  ·  {b['latency_ms']['count']}/{o['latency_ms']['count']} timed runs  ·  "
                  f"{r['seconds']:.0f} s total")
    if r.get("export"):
        e = r["export"]
        if e.get("verified"):
            console.print(f"artifact: {e['path']} ({e['format']}, {e['bytes_on_disk'] / 1e6:.1f} MB), reloaded and "
                          f"verified (max rel. error {e['max_rel_error']:.1e})")
        else:
            console.print(f"[yellow]artifact not saved: {e.get('error')}[/]")
    if session:
        console.print(f"session: {session}")


def print_sessions(rows: list[dict], root) -> None:
    if not rows:
        console.print(f"no sessions in {root}")
        return
    t = Table("name", "model", "created", "runs", "best speedup", "artifact")
    for r in rows:
        if "error" in r:
            t.add_row(r["name"], f"[red]{r['error']}[/]", "", "", "", "")
            continue
        best = f"{r['best_speedup']:.2f}×" if r.get("best_speedup") else "n/a"
        t.add_row(r["name"], r["model"], r["created"], str(r["runs"]), best, "yes" if r["artifact"] else "no")
    console.print(t)


def print_session(session) -> None:
    s = session.summary()
    console.print(f"[bold]{s['name']}[/] · {s['model']} · created {s['created']} · {s['runs']} runs")
    t = Table("run", "optimizations", "speedup", "p50 ms", "size MB", "accuracy deltas")
    for run in session.results.get("runs", []):
        opts = ", ".join(o["name"] for o in run.get("optimizations", [])) or "baseline"
        acc = "; ".join(f"{k} {v['delta']:+.4f}" for k, v in (run.get("accuracy") or {}).items())
        t.add_row(str(run.get("id", "")), opts, f"{run.get('speedup', 0):.2f}×",
                  _fmt(_stat(run["optimized"], "latency_ms")), _fmt(run["optimized"]["model_size_mb"], 1), acc)
    console.print(t)


def print_optimizations(specs: list[dict]) -> None:
    t = Table("name", "family", "stage", "devices", "export", "parameters", "summary")
    for s in specs:
        params = "\n".join(
            f"{p['name']}: {p['type']} = {p['default']}"
            + (f" [{p['min']}, {p['max']}]" if p["min"] is not None or p["max"] is not None else "")
            + (f" {{{', '.join(map(str, p['choices']))}}}" if p["choices"] else "")
            for p in s["params"]) or "-"
        t.add_row(s["name"], s["family"], s["stage"], ",".join(s["devices"]), s["exportable"], params, s["summary"])
    console.print(t)


def print_info(env: dict) -> None:
    t = Table("item", "value")
    for k, v in env.items():
        if k == "cpu_isa" and isinstance(v, dict):  # one readable line; --json has every field
            t.add_row("cpu features", v.get("summary", ""))
            continue
        t.add_row(k, str(v))
    console.print(t)
