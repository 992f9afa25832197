"""``optbench run``: baseline + optimized in a job process, bench, evaluate, report (and keep a session)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from workbench.cli.args import add_recipe_args, add_sessions_dir_arg, open_named_session, recipe_from_args
from workbench.cli.checks import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, exit_code, fail, hardware_warning
from workbench.core.recipe import precheck
from workbench.cli.progress import Progress
from workbench.core.errors import InputError


def add_parser(sub) -> None:
    run = sub.add_parser("run", help="baseline + optimized: bench, evaluate, report (and keep a session)")
    add_recipe_args(run)
    run.add_argument("--session", help="keep the run in sessions/NAME (re-runs its recipe when --model is omitted)")
    run.add_argument("--no-artifact", action="store_true", help="with --session: do not save the optimized model")
    run.add_argument("--export", metavar="DIR", help="also export the optimized model to DIR (verified)")
    run.add_argument("--json", action="store_true", help="print exactly one JSON document on stdout")
    add_sessions_dir_arg(run)
    run.set_defaults(handler=cmd_run)


def cmd_run(args) -> int:
    from workbench.core.jobs.client import Job
    from workbench.core.session import SessionStore

    store = SessionStore()
    session = open_named_session(store, args.session, args.model) if args.session else None
    base = session.recipe if session is not None else None
    recipe = precheck(recipe_from_args(args, base))
    if args.export:
        out = Path(args.export)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise InputError(f"--export {args.export}: exists and is not an empty folder; expected a new folder")
        from workbench.core import optimizations

        for step in recipe.optimizations:  # known before loading: say so now, not after the whole run
            why = optimizations.get(step.name).export_refusal(step.params)
            if why:
                raise InputError(f"--export {args.export}: {step.name} cannot be exported ({why}); expected a "
                                 f"recipe without it, or no --export")
    artifact_dir = None
    if args.export:
        artifact_dir = str(Path(args.export).resolve())
    elif args.session and not args.no_artifact:
        artifact_dir = str(store.path(args.session) / "artifact")

    shown = set()
    warning = hardware_warning(recipe)
    if warning:  # before minutes of baseline, not after
        print(f"optbench: warning: {warning}", file=sys.stderr)
        shown.add(warning)
    job = Job({"job": "run", "recipe": recipe.to_dict(), "artifact_dir": artifact_dir})
    view = Progress(enabled=sys.stderr.isatty() and not args.json)
    final, error = None, None
    try:
        for event in job.events():
            kind = event["type"]
            if kind == "progress":
                view.update(event["stage"], event.get("fraction", 0.0), event)
            elif kind == "log" and event.get("level") in ("warning", "error") and not args.json \
                    and event["text"] not in shown:
                view.log(event["text"].splitlines()[-1] if event.get("level") == "error" else event["text"])
            elif kind == "result" and event.get("phase") == "final":
                final = event["report"]
                if args.session:
                    if session is None:
                        session = store.create(args.session, recipe, final.get("environment"))
                    else:
                        session.recipe, session.environment = recipe, final.get("environment") or {}
                        session.save()
                    session.add_run({"id": len(session.results.get("runs", [])) + 1, **final})
            elif kind == "error":
                error = event
    except KeyboardInterrupt:
        view.stop()
        job.cancel()
        fail({"kind": "cancelled", "message": "interrupted; the job was cancelled"}, args.json)
        return EXIT_INTERRUPTED
    finally:
        view.stop()
    if error is not None or final is None:
        if args.session and session is None:  # a failed first run leaves no empty session folder behind
            try:
                store.path(args.session).rmdir()
            except OSError:
                pass
        error = error or {"kind": "crashed", "message": "the job ended without a result", "hint": ""}
        fail(error, args.json)
        return exit_code(error)
    export_failed = bool(args.export and final.get("export") and not final["export"].get("verified"))
    if export_failed:  # the run's figures stand (and are printed, the session keeps them); the exit says it failed
        fail({"kind": "export", "message": f"--export {args.export}: {final['export'].get('error')}"})
    if args.json:
        print(json.dumps(final, default=str))
    else:
        from workbench.cli.render import print_report

        print_report(final, session=args.session)
    return EXIT_FAILED if export_failed else EXIT_OK
