"""Rich renderings for the CLI: run reports, sessions, the optimization list, info, recommendations, sweeps and
tunes (and a tune's one line per trial). The commands import this lazily: rich is not loaded for ``--help``.
(Core never imports this.)"""

from __future__ import annotations

import sys

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
    if env.get("tp"):
        plan = (r.get("memory_estimate") or {}).get("tp") or {}
        fit = plan.get("smallest_fitting_degree")
        console.print(f"tp: {env['tp']} ranks over {env.get('tp_backend')} ({', '.join(env.get('tp_devices') or [])})"
                      + (f" · estimated peak per rank {plan['run_peak_mb']:.0f} MB ({plan['weights_mb']:.0f} MB "
                         f"weights, {plan['kv_cache_mb']:.0f} MB KV cache)" if plan else "")
                      + (f" · smallest degree that fits: {fit}" if fit else ""))
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
    capped = [p for p in ("baseline", "optimized") if (r.get(p) or {}).get("stopped_early") == "max_seconds"]
    if capped:
        console.print(f"[yellow]the {' and '.join(capped)} bench hit --max-seconds: fewer timed calls than asked, a "
                      f"rougher median[/]")
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


# ---------------------------------------------------------------- recommend and sweep

def print_recommendation(rec: dict, chk: dict | None) -> None:
    con = Console()
    m, hw, est = rec["model"], rec["hardware"], rec["estimate"]
    gpu = hw.get("gpu")
    where = f"{gpu['name']} ({gpu['memory_mb']:.0f} MB, compute {gpu['compute_capability']})" if gpu else \
        f"CPU, {hw['cpu_cores']} cores, {hw['ram_mb']:.0f} MB RAM" + \
        (f", measured {hw['fp32_gflops']:.0f} GFLOP/s fp32, {hw['copy_gb_s']:.1f} GB/s copy"
         if hw.get("fp32_gflops") else "")
    con.print(f"[b]{m['ref']}[/b]: {m['architecture']}, {m['params'] / 1e6:.1f} M parameters, task {m['task']}")
    con.print(f"hardware: {where}")
    t = Table(title="proposed recipe", show_lines=True)
    t.add_column("#")
    t.add_column("step")
    t.add_column("why")
    for i, s in enumerate(rec["steps"], 1):
        params = ",".join(f"{k}={v}" for k, v in s["params"].items())
        t.add_row(str(i), s["name"] + (f":{params}" if params else ""), s["reason"])
    con.print(t)
    con.print(f"estimate: weights {est['weights_mb']:.1f} MB, KV cache {est['kv_cache_mb']:.1f} MB, activations "
              f"{est['activations_mb']:.1f} MB, deployed total {est['deployed_mb']:.0f} MB"
              + (f", latency >= {est['latency_ms']:.1f} ms ({est['latency_basis']})" if est.get("latency_ms") else ""))
    for w in rec["warnings"]:
        con.print(f"[yellow]warning:[/] {w}")
    opts = " ".join(f"--opt {s['name']}" + (":" + ",".join(f"{k}={v}" for k, v in s["params"].items())
                                            if s["params"] else "") for s in rec["steps"])
    con.print(f"apply: optbench recommend --model {m['ref']} ... --apply   (or: optbench run --model {m['ref']} {opts})")
    if chk:
        t = Table(title="estimate vs measured")
        for col in ("quantity", "estimate", "measured", "error", "note"):
            t.add_column(col)
        for r in chk["rows"]:
            t.add_row(r["what"], f"{r['estimate']:.4g}", f"{r['measured']:.4g}",
                      f"{100 * r['error']:+.0f} %" if r["error"] is not None else "-", r["note"])
        con.print(t)
        drops = ", ".join(f"{k} {v:+.2f} %" for k, v in chk["accuracy_drop_percent"].items())
        con.print(f"speedup {chk['speedup']:.2f}x; accuracy drop: {drops or 'n/a'}")


def print_sweep(result: dict) -> None:
    t = Table(title=f"batch sweep: {result['model']['ref']} on {result['device']}")
    for col in ("batch", "latency p50 (ms)", "per item (ms)", f"throughput ({result['throughput_unit']})"):
        t.add_column(col, justify="right")
    k = (result["knee"] or {}).get("batch")
    for p in result["points"]:
        if "error" in p:
            t.add_row(str(p["batch"]), p["error"], "", "")
            continue
        mark = " <- knee" if p["batch"] == k else ""
        t.add_row(f"{p['batch']}{mark}", f"{p['latency_ms']:.2f}", f"{p['latency_per_item_ms']:.2f}",
                  f"{p['throughput']:.1f}")
    con = Console()
    con.print(t)
    if result["knee"]:
        con.print(f"knee: batch {k} ({result['knee']['rule']})")


# ---------------------------------------------------------------- tune

def _fmt_g(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


_SHORT = {"cosine_to_baseline": "cos", "recall_at_1": "R@1", "perplexity": "ppl", "kl_divergence": "KL",
          "next_token_agreement": "agree", "agreement": "agree", "accuracy": "acc", "cosine_min": "cos min"}


def _accuracy_text(trial: dict) -> str:
    parts = []
    for metric, row in (trial.get("accuracy") or {}).items():
        parts.append(f"{_SHORT.get(metric, metric)} {row['delta']:+.3g}" + ("" if row.get("ok") else " (over)"))
    return ", ".join(parts) or "-"


class TuneView:
    """One line per trial on stderr (nothing with --json)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.unit = ""
        self.gated = 0

    def on_event(self, type_: str, **ev) -> None:
        if not self.enabled:
            return
        out = sys.stderr
        if type_ == "tune-start":
            self.unit = ev["objective"]["unit"]
            sp = ev["space"]
            print(f"tune {ev['model']} ({ev['task']}, {ev['device']}): objective {ev['objective']['name']} "
                  f"({ev['objective']['metric']}), budget {ev['budget_s']:.0f} s; {sp['size']} candidates "
                  f"({sp['singles']} single, {sp['pairs']} pairs, {sp['triples']} triples), "
                  f"{sp['skipped']} skipped, {sp['capped']} over the cap", file=out)
        elif type_ == "trial":
            if ev["status"] == "pruned" and not ev["ran"] and not ev["cached"]:
                self.gated += 1  # a combination not run because of its parts: counted in the summary
                return
            tag = "cached" if ev["cached"] else ev["status"]
            obj = f"{_fmt_g(ev['objective'])} {self.unit}" if ev["objective"] is not None else "-"
            g = f"x{ev['gain']:.2f}" if ev.get("gain") else ""
            ok = "meets budget" if ev["feasible"] else (ev.get("reason") or "")[:90]
            if ev.get("contended"):
                ok = f"[other processes used {100 * ev['others_cpu']:.0f} % of the CPU] " + ok
            print(f"[{ev['id']:>3}] {tag:<9} {ev['label'][:60]:<60} {obj:>16} {g:>7}  {ok}", file=out)
        elif type_ == "log" and ev.get("level") in ("warning", "error"):
            print(ev["text"].splitlines()[-1] if ev["text"] else "", file=out)

    def stop(self) -> None:
        if self.enabled and self.gated:
            print(f"{self.gated} combinations not run because of their parts' results (reasons in --json)",
                  file=sys.stderr)


def print_tune(report: dict, session: str | None = None) -> None:
    con = Console() if sys.stdout.isatty() else Console(width=160)
    obj = report["objective"]
    chosen = report.get("chosen") or {}
    t = Table(title=f"tune frontier: {report['model'].get('ref', '')} · {obj['name']} ({obj['unit']}, "
                    f"{'lower' if obj['direction'] == 'min' else 'higher'} is better) · accuracy budget "
                    f"{report['constraints']['max_accuracy_drop']['text']}")
    for col, just in (("", "left"), ("#", "right"), ("recipe", "left"), (obj["unit"], "right"),
                      ("vs baseline", "right"), ("accuracy (delta)", "left"), ("budget used", "right"),
                      ("meets budget", "left")):
        t.add_column(col, justify=just)
    for f in report["frontier"]:
        mark = "*" if chosen and f.get("id") == chosen.get("id") else ""
        used = f.get("budget_used")
        t.add_row(mark, "-" if f.get("baseline") else str(f["id"]), f["label"], _fmt_g(f["objective"]),
                  f"x{f['gain']:.2f}" if f.get("gain") else "-", _accuracy_text(f),
                  f"{100 * used:.0f} %" if used is not None else "-",
                  "yes" if f.get("feasible") else "no")
    con.print(t)
    c = report["counts"]
    con.print(f"{c['decided']} trials decided: {c['run']} run, {c['cached']} from the cache, {c['finished']} "
              f"finished, {c['pruned']} pruned, {c['failed']} failed, {c['cancelled']} cancelled; "
              f"{c['not_run']} not reached ({report['stopped']}); {report['seconds']:.0f} s")
    if c.get("contended"):
        con.print(f"[yellow]{c['contended']} trials were benchmarked while other processes used more than "
                  f"{100 * report['constraints'].get('contention_limit', 0.25):.0f} % of the CPU: their latency is "
                  f"not trustworthy[/]")
    if chosen:
        opts = " ".join(f"--opt {s['name']}" + (":" + ",".join(f"{k}={v}" for k, v in s["params"].items())
                                                if s["params"] else "") for s in chosen["recipe"])
        con.print(f"chosen: [b]{chosen['label']}[/b] {_fmt_g(chosen['objective'])} {obj['unit']} "
                  f"(x{chosen['gain']:.2f} vs baseline)")
        con.print(f"run it: optbench run --model {report['model'].get('ref', '')} {opts}"
                  + (f"   (saved in session {session}: optbench run --session {session} --export DIR)"
                     if session else ""))
    else:
        con.print("[yellow]no recipe meets the accuracy budget and improves on the baseline[/] (exit 3)")
