"""``optbench tune``: search the optimization registry for the best recipe within an accuracy budget.

The search runs in this process (torch-free); every trial runs in a tune-worker job (workbench/core/tune/, docs/tune.md).

Exit codes: 0 a recipe meets the budget (and improves the objective) · 3 none does (the report is still printed,
``"ok": false``) · 1 the tune failed · 2 bad usage or input · 130 interrupted.
"""

from __future__ import annotations

import json

from workbench.cli.args import (TASKS, add_bench_eval_args, add_sessions_dir_arg, open_named_session,
                                recipe_from_args)

EXIT_NO_RECIPE = 3


def add_parser(sub) -> None:
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
    t.add_argument("--task", choices=TASKS, help="override the detected task")
    t.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    t.add_argument("--trust-remote-code", action="store_true",
                   help="allow a model's own Python code to run (off unless you ask)")
    add_bench_eval_args(t, " (each trial)", eval_none=False)
    t.add_argument("--session", help="save the chosen recipe and the tune report into sessions/NAME")
    t.add_argument("--json", action="store_true", help="print exactly one JSON document on stdout")
    add_sessions_dir_arg(t)
    t.set_defaults(opt=[], handler=cmd_tune)


def config_from_args(args, base=None):
    """A TuneConfig from the flags, through the core's tune form (the checks the TUI's tune form runs too). Raises
    InputError naming the parameter; the CLI renders it as its flag."""
    from workbench.core.tune import tune_config

    return tune_config(recipe_from_args(args, base), objective=args.objective,
                       max_accuracy_drop=args.max_accuracy_drop, budget=args.budget, trial_timeout=args.trial_timeout,
                       memory_mb=args.memory_mb, max_trials=args.max_trials, min_gain=args.min_gain,
                       max_contention=args.max_contention, max_space=args.max_space, opts=args.opts,
                       retry_failed=args.retry_failed)


def cmd_tune(args) -> int:
    from workbench.cli.render import TuneView, print_tune
    from workbench.core.session import SessionStore
    from workbench.core.tune import Tuner

    store, session = None, None
    if args.session:
        store = SessionStore()
        session = open_named_session(store, args.session, args.model)
        if session is not None and not args.model:
            args.model = session.recipe.model.ref
    cfg = config_from_args(args, base=session.recipe if session is not None else None)
    view = TuneView(enabled=not args.json)
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
    session.add_tune(report)
