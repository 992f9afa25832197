"""``optbench export``: copy a session's artifact to a folder and verify it reloads (in a job process)."""

from __future__ import annotations

import json
from pathlib import Path

from workbench.cli.args import add_sessions_dir_arg
from workbench.cli.checks import EXIT_OK, exit_code, fail
from workbench.core.errors import InputError


def add_parser(sub) -> None:
    x = sub.add_parser("export", help="copy a session's artifact to a folder and verify it reloads")
    x.add_argument("name")
    x.add_argument("--out", required=True)
    x.add_argument("--json", action="store_true")
    add_sessions_dir_arg(x)
    x.set_defaults(handler=cmd_export)


def cmd_export(args) -> int:
    from workbench.core.jobs.client import Job
    from workbench.core.session import SessionStore

    store = SessionStore()
    session = store.open(args.name)
    if not session.artifact_dir.is_dir():
        raise InputError(f"session {args.name}: has no artifact; expected a session whose run saved one "
                         f"(run without --no-artifact)")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out {args.out}: exists and is not an empty folder; expected a new folder")
    job = Job({"job": "verify", "src": str(session.artifact_dir), "out": str(out.resolve())})
    result, error = None, None
    for event in job.events():
        if event["type"] == "result":
            result = event["report"]
        elif event["type"] == "error":
            error = event
    if error or result is None:
        error = error or {"message": "the export job ended without a result", "hint": "", "kind": "crashed"}
        fail(error, args.json)
        return exit_code(error)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"exported {args.name} to {result['path']} ({result['bytes_on_disk'] / 1e6:.1f} MB); reloaded and "
              f"verified: max relative error {result['max_rel_error']:.2e} (tolerance {result['tolerance']:.0e})")
    return EXIT_OK
