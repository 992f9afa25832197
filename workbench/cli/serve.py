"""``optbench serve``: the workbench in a browser (textual-serve), bound to 127.0.0.1."""

from __future__ import annotations

import os

from workbench.cli.args import add_sessions_dir_arg


def add_parser(sub) -> None:
    sv = sub.add_parser("serve", help="the workbench in a browser (textual-serve), bound to 127.0.0.1")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    add_sessions_dir_arg(sv)
    sv.set_defaults(handler=cmd_serve)


def cmd_serve(args) -> int:
    from workbench.tui.serve import serve

    return serve(args.host, args.port, os.environ.get("OPTBENCH_SESSIONS"))
