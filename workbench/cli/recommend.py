"""``optbench recommend``: propose a recipe from the model, this hardware and the user's constraints.

It runs in this process (imports torch when called); ``--apply`` runs the proposed recipe as a normal job (the same
engine as ``optbench run``) and then shows estimate versus measured.
"""

from __future__ import annotations

import json
import sys

from workbench.cli.args import TASKS
from workbench.cli.checks import EXIT_OK, check_positive, raise_job_error
from workbench.core.recipe import precheck
from workbench.cli.progress import Progress
from workbench.core.errors import InputError


def add_parser(sub) -> None:
    r = sub.add_parser("recommend", help="propose a recipe from the model, this hardware and your constraints "
                                         "(with estimates; --apply runs it and shows estimate vs measured)")
    r.add_argument("--model", required=True, help="demo:smollm2, demo:minilm, a folder, a .gguf file or an id")
    r.add_argument("--task", choices=TASKS)
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
    r.set_defaults(handler=cmd_recommend)


def cmd_recommend(args) -> int:
    from workbench.core import modelref
    from workbench.core.recommend import Constraints, check, recommend

    modelref.resolve(args.model)  # a bad reference fails fast, before torch
    check_positive("memory-mb", args.memory_mb)
    check_positive("latency-ms", args.latency_ms)
    if not 0 <= args.max_drop <= 100:
        raise InputError(f"--max-drop {args.max_drop}: expected a percentage in [0, 100]")
    check_positive("batch", args.batch, 0, 4096)
    check_positive("seq-len", args.seq_len, 0, 131072)
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
        from workbench.cli.render import print_recommendation

        print_recommendation(rec, out.get("check"))
    return EXIT_OK


def _run_recipe(recipe_dict: dict, args) -> dict:
    from workbench.core.jobs.client import Job
    from workbench.core.recipe import Recipe

    recipe = Recipe.from_dict(recipe_dict, where="recommended recipe")
    if getattr(args, "min_seconds", None) is not None:
        recipe.bench.min_seconds = args.min_seconds
    recipe = precheck(recipe)
    job = Job({"job": "run", "recipe": recipe.to_dict(), "artifact_dir": None})
    view = Progress(enabled=sys.stderr.isatty() and not args.json)
    final, error = None, None
    try:
        for event in job.events():
            if event["type"] == "progress":
                view.update(event["stage"], event.get("fraction", 0.0), event)
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
        raise_job_error(error or {"message": "the job ended without a result", "kind": "crashed"})
    return final
