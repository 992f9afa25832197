"""CLI subcommands of the optimization catalogue: ``recommend`` (strategy recommender) and ``sweep`` (batch-size
sweep). Wired into workbench/cli.py with::

    from workbench import commands_catalogue
    handlers = commands_catalogue.add_parsers(sub)     # {"recommend": cmd_recommend, "sweep": cmd_sweep}

and the handlers merged into cli.main's dispatch table. Both run in this process (they import torch when called);
``recommend --apply`` runs the proposed recipe as a normal job (the same engine as ``optbench run``) and then shows
estimate versus measured.
"""

from __future__ import annotations

import json
import sys

from workbench.core.errors import InputError


def add_parsers(sub) -> dict:
    r = sub.add_parser("recommend", help="propose a recipe from the model, this hardware and your constraints "
                                         "(with estimates; --apply runs it and shows estimate vs measured)")
    r.add_argument("--model", required=True, help="demo:smollm2, demo:minilm, a folder, a .gguf file or an id")
    r.add_argument("--task", choices=("causal-lm", "encoder", "seq-cls"))
    r.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    r.add_argument("--memory-mb", type=float, help="memory cap (GPU memory on a GPU, process RSS on CPU)")
    r.add_argument("--latency-ms", type=float, help="p50 latency target for the benchmark workload")
    r.add_argument("--max-drop", type=float, default=1.0, help="allowed accuracy drop in percent (default 1)")
    r.add_argument("--batch", type=int)
    r.add_argument("--seq-len", type=int, default=128)
    r.add_argument("--new-tokens", type=int, default=32)
    r.add_argument("--no-measure", action="store_true", help="skip the short matmul/bandwidth measurement")
    r.add_argument("--apply", action="store_true", help="run the proposed recipe and compare estimates with results")
    r.add_argument("--min-seconds", type=float, help="with --apply: benchmark time per phase")
    r.add_argument("--json", action="store_true", help="print exactly one JSON document on stdout")

    s = sub.add_parser("sweep", help="batch-size sweep: throughput vs latency and the knee of the curve")
    s.add_argument("--model", required=True)
    s.add_argument("--opt", action="append", default=[], metavar="NAME[:k=v,...]",
                   help="optimizations applied before sweeping (repeatable, in order)")
    s.add_argument("--task", choices=("causal-lm", "encoder", "seq-cls"))
    s.add_argument("--device", default="auto")
    s.add_argument("--batches", default="1,2,4,8,16,32", help="comma-separated batch sizes (default 1,2,4,8,16,32)")
    s.add_argument("--seq-len", type=int, default=128)
    s.add_argument("--new-tokens", type=int, default=32)
    s.add_argument("--warmup", type=int, default=1)
    s.add_argument("--min-iters", type=int, default=3)
    s.add_argument("--min-seconds", type=float, default=1.0)
    s.add_argument("--knee", type=float, default=0.9, help="knee: smallest batch reaching this fraction of the best "
                                                          "throughput (default 0.9)")
    s.add_argument("--json", action="store_true")
    return {"recommend": cmd_recommend, "sweep": cmd_sweep}


def _check_positive(name: str, value, lo=0.0, hi=None) -> None:
    if value is None:
        return
    if value <= lo or (hi is not None and value > hi):
        raise InputError(f"--{name} {value}: out of range; expected a number > {lo}" + (f" and <= {hi}" if hi else ""))


# ------------------------------------------------------------------ recommend

def cmd_recommend(args) -> int:
    from workbench.core import modelref
    from workbench.core.recommend import Constraints, check, recommend

    modelref.resolve(args.model)  # a bad reference fails fast, before torch
    _check_positive("memory-mb", args.memory_mb)
    _check_positive("latency-ms", args.latency_ms)
    if not 0 <= args.max_drop <= 100:
        raise InputError(f"--max-drop {args.max_drop}: expected a percentage in [0, 100]")
    _check_positive("batch", args.batch, 0, 4096)
    _check_positive("seq-len", args.seq_len, 0, 131072)
    c = Constraints(memory_mb=args.memory_mb, latency_ms=args.latency_ms, max_drop=args.max_drop, batch=args.batch,
                    seq_len=args.seq_len, new_tokens=args.new_tokens)
    rec = recommend(args.model, c, task=args.task, device=args.device, measure=not args.no_measure)
    out = {"ok": True, "recommendation": rec}
    if args.apply:
        report = _run_recipe(rec["recipe"], args)
        out["report"] = report
        out["check"] = check(rec, report)
    if args.json:
        print(json.dumps(out, default=str))
    else:
        _print_recommendation(rec, out.get("check"))
    return 0


def _run_recipe(recipe_dict: dict, args) -> dict:
    from workbench.cli import _Progress, precheck
    from workbench.core.errors import JobFailed
    from workbench.core.jobs.client import Job
    from workbench.core.recipe import Recipe

    recipe = Recipe.from_dict(recipe_dict, where="recommended recipe")
    if getattr(args, "min_seconds", None) is not None:
        recipe.bench.min_seconds = args.min_seconds
    recipe = precheck(recipe)
    job = Job({"job": "run", "recipe": recipe.to_dict(), "artifact_dir": None})
    view = _Progress(enabled=sys.stderr.isatty() and not args.json)
    final, error = None, None
    try:
        for event in job.events():
            if event["type"] == "progress":
                view.update(event["stage"], event.get("fraction", 0.0))
            elif event["type"] == "result" and event.get("phase") == "final":
                final = event["report"]
            elif event["type"] == "error":
                error = event
    except KeyboardInterrupt:
        job.cancel()
        raise
    finally:
        view.stop()
    if error is not None or final is None:
        error = error or {"message": "the job ended without a result", "kind": "crashed"}
        if error.get("kind") == "input":
            raise InputError(error["message"], error.get("hint", ""))
        raise JobFailed(error["message"], error.get("hint", ""))
    return final


def _print_recommendation(rec: dict, chk: dict | None) -> None:
    from rich.console import Console
    from rich.table import Table

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


# ------------------------------------------------------------------ sweep

def cmd_sweep(args) -> int:
    from workbench.core import modelref, optimizations
    from workbench.core.sweep import batch_sweep, parse_batches

    modelref.resolve(args.model)
    batches = parse_batches(args.batches)
    opts = [optimizations.parse_opt_arg(o) for o in args.opt]
    for name, params in opts:
        optimizations.get(name).resolve(params)
    _check_positive("seq-len", args.seq_len, 0, 131072)
    if args.new_tokens < 2:
        raise InputError(f"--new-tokens {args.new_tokens}: expected at least 2")

    def log(text: str) -> None:
        if not args.json:
            print(text, file=sys.stderr)

    def on_point(p: dict) -> None:
        if args.json:
            return
        if "error" in p:
            print(f"batch {p['batch']:>5}: {p['error']}", file=sys.stderr)
        else:
            print(f"batch {p['batch']:>5}: p50 {p['latency_ms']:9.2f} ms  {p['throughput']:10.1f} "
                  f"{p['throughput_unit']}", file=sys.stderr)

    result = batch_sweep(args.model, batches, opts, task=args.task, device=args.device, seq_len=args.seq_len,
                         new_tokens=args.new_tokens, warmup=args.warmup, min_iters=args.min_iters,
                         min_seconds=args.min_seconds, knee_fraction=args.knee, log=log, on_point=on_point)
    if args.json:
        print(json.dumps({"ok": True, **result}, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

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
    return 0
