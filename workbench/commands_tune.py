"""``optbench tune``: search the optimization registry for the best recipe within an accuracy budget.

Wired into workbench/cli.py like commands_catalogue (``add_parsers(sub)`` returns ``{"tune": cmd_tune}``). The
search runs in this process (torch-free); every trial runs in a tune-worker job (workbench/core/tune.py).

Exit codes: 0 a recipe meets the budget (and improves the objective) · 3 none does (the report is still printed,
``"ok": false``) · 1 the tune failed · 2 bad usage or input · 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys

from workbench.cliargs import add_bench_eval_args
from workbench.core.errors import InputError

EXIT_NO_RECIPE = 3


def add_parsers(sub) -> dict:
    from workbench.core.tune import OBJECTIVES

    t = sub.add_parser("tune", help="search optimizations for the best recipe within an accuracy budget "
                                    "(Pareto frontier; exit 3 when no recipe meets the budget)")
    t.add_argument("--model", help="demo:smollm2, demo:minilm, a local folder, a .gguf file or a Hugging Face id")
    t.add_argument("--objective", choices=OBJECTIVES, default="latency",
                   help="latency (p50; decode ms/token for causal LMs), throughput, memory (peak) or size")
    t.add_argument("--max-accuracy-drop", default="1%", metavar="SPEC",
                   help="1%% (relative, every metric), 0.01 (absolute) or perplexity=2%%,cosine=0.01 (default 1%%)")
    t.add_argument("--budget", default="20m", help="time budget for the whole tune: 20m, 90s, 1h30m (default 20m)")
    t.add_argument("--memory-mb", type=float, help="memory cap (process RSS peak on CPU, CUDA reserved on a GPU)")
    t.add_argument("--opts", metavar="NAME,NAME", help="restrict the search to these optimizations")
    t.add_argument("--max-trials", type=int, help="at most this many trials run (cached ones do not count)")
    t.add_argument("--max-space", type=int, default=400, help="cap on the number of candidate recipes (default 400)")
    t.add_argument("--trial-timeout", metavar="DURATION", help="fail a trial that takes longer (e.g. 5m)")
    t.add_argument("--retry-failed", action="store_true", help="re-run trials whose failure is cached")
    t.add_argument("--min-gain", type=float, default=5.0, metavar="PERCENT",
                   help="the chosen recipe must beat the baseline by this much; parts that gain less alone are not "
                        "combined (default 5)")
    t.add_argument("--max-contention", type=float, default=25.0, metavar="PERCENT",
                   help="re-benchmark once when other processes used more of the CPU than this (default 25)")
    t.add_argument("--task", choices=("causal-lm", "encoder", "seq-cls"), help="override the detected task")
    t.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    t.add_argument("--trust-remote-code", action="store_true",
                   help="allow a model's own Python code to run (off unless you ask)")
    add_bench_eval_args(t, " (each trial)", eval_none=False)
    t.add_argument("--session", help="save the chosen recipe and the tune report into sessions/NAME")
    t.add_argument("--json", action="store_true", help="print exactly one JSON document on stdout")
    t.add_argument("--sessions-dir", default=argparse.SUPPRESS, help="where sessions live")
    t.set_defaults(opt=[])
    return {"tune": cmd_tune}


def config_from_args(args, base=None):
    """A TuneConfig from the flags; every check that needs no torch. Raises InputError naming the input."""
    from workbench.cli import precheck, recipe_from_args
    from workbench.core import optimizations, tune

    accuracy = tune.parse_accuracy_budget(args.max_accuracy_drop)
    budget_s = tune.parse_duration(args.budget, "--budget")
    trial_timeout = tune.parse_duration(args.trial_timeout, "--trial-timeout") if args.trial_timeout else None
    if args.memory_mb is not None and not args.memory_mb > 0:
        raise InputError(f"--memory-mb {args.memory_mb}: expected a number of MB > 0")
    if args.max_trials is not None and args.max_trials < 1:
        raise InputError(f"--max-trials {args.max_trials}: expected an integer >= 1")
    if not 0 <= args.min_gain <= 1000:
        raise InputError(f"--min-gain {args.min_gain}: expected a percentage in [0, 1000]")
    if not 0 <= args.max_contention <= 100:
        raise InputError(f"--max-contention {args.max_contention}: expected a percentage in [0, 100]")
    if args.max_space < 1:
        raise InputError(f"--max-space {args.max_space}: expected an integer >= 1")
    opts = None
    if args.opts is not None:
        opts = [o.strip() for o in args.opts.split(",") if o.strip()]
        known = {s.name for s in optimizations.all_specs()}
        for name in opts:
            if name not in known:
                raise InputError(f"--opts {name}: unknown optimization; expected one of: "
                                 f"{', '.join(sorted(known))}")
        if not opts:
            raise InputError(f"--opts {args.opts!r}: empty; expected NAME[,NAME...]")
    recipe = precheck(recipe_from_args(args, base))
    if getattr(recipe.model, "device_map", None):
        raise InputError(f"device_map {recipe.model.device_map}: tune rebuilds each trial's model on one device; "
                         f"expected a recipe without device_map")
    if recipe.eval.source == "none":
        raise InputError("--eval none: a tune needs accuracy to hold a budget; expected builtin, a file or hf:NAME")
    recipe.optimizations = []
    return tune.TuneConfig(recipe=recipe, objective=args.objective, accuracy=accuracy, memory_mb=args.memory_mb,
                           budget_s=budget_s, max_trials=args.max_trials, opts=opts, max_space=args.max_space,
                           trial_timeout_s=trial_timeout, retry_failed=args.retry_failed,
                           min_gain=args.min_gain / 100, contention_limit=args.max_contention / 100)


def cmd_tune(args) -> int:
    from workbench.cliargs import open_named_session
    from workbench.core.session import SessionStore
    from workbench.core.tune import Tuner

    store, session = None, None
    if args.session:
        store = SessionStore()
        session = open_named_session(store, args.session, args.model)
        if session is not None and not args.model:
            args.model = session.recipe.model.ref
    cfg = config_from_args(args, base=session.recipe if session is not None else None)
    view = _View(enabled=not args.json)
    try:
        report = Tuner(cfg, view.on_event).run()
    finally:
        view.stop()
    if args.session:
        _save_session(store, session, args.session, cfg, report)
    if args.json:
        print(json.dumps(report, default=str))
    else:
        print_tune(report, session=args.session)
    return 0 if report.get("chosen") else EXIT_NO_RECIPE


def _save_session(store, session, name: str, cfg, report: dict) -> None:
    from workbench.core import atomic
    from workbench.core.recipe import Recipe

    if report.get("chosen_recipe"):
        recipe = Recipe.from_dict(report["chosen_recipe"], where="tune's chosen recipe")
    else:
        recipe = session.recipe if session is not None else cfg.recipe
    if session is None:
        session = store.create(name, recipe, report.get("environment"))
    else:
        session.recipe, session.environment = recipe, report.get("environment") or session.environment
        session.save()
    session._refuse_if_corrupt(session.results_path, json.loads)
    session.results.setdefault("tunes", []).append(report)
    atomic.write_json(session.results_path, session.results)


# ------------------------------------------------------------------ output

def _fmt(v, digits: int = 4) -> str:
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


class _View:
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
            obj = f"{_fmt(ev['objective'])} {self.unit}" if ev["objective"] is not None else "-"
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
    from rich.console import Console
    from rich.table import Table

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
        t.add_row(mark, "-" if f.get("baseline") else str(f["id"]), f["label"], _fmt(f["objective"]),
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
        con.print(f"chosen: [b]{chosen['label']}[/b] {_fmt(chosen['objective'])} {obj['unit']} "
                  f"(x{chosen['gain']:.2f} vs baseline)")
        con.print(f"run it: optbench run --model {report['model'].get('ref', '')} {opts}"
                  + (f"   (saved in session {session}: optbench run --session {session} --export DIR)"
                     if session else ""))
    else:
        con.print("[yellow]no recipe meets the accuracy budget and improves on the baseline[/] (exit 3)")
