"""``optbench sessions``: list, show, rename or delete sessions."""

from __future__ import annotations

import json
import sys

from workbench.cli.args import add_sessions_dir_arg
from workbench.cli.checks import EXIT_OK
from workbench.core.errors import InputError


def add_parser(sub) -> None:
    s = sub.add_parser("sessions", help="list, show, rename or delete sessions")
    s.add_argument("action", nargs="?", default="list", choices=("list", "show", "delete", "rename"))
    s.add_argument("name", nargs="?")
    s.add_argument("new_name", nargs="?")
    s.add_argument("--yes", action="store_true", help="delete without asking")
    s.add_argument("--json", action="store_true")
    add_sessions_dir_arg(s)
    s.set_defaults(handler=cmd_sessions)


def cmd_sessions(args) -> int:
    from workbench.core.session import SessionStore

    store = SessionStore()
    if args.action == "list":
        rows = store.list()
        if args.json:
            print(json.dumps(rows))
            return EXIT_OK
        from workbench.cli.render import print_sessions

        print_sessions(rows, store.root)
        return EXIT_OK
    if not args.name:
        raise InputError(f"sessions {args.action}: missing NAME; expected a session name")
    if args.action == "show":
        session = store.open(args.name)
        if args.json:
            print(json.dumps({**session.summary(), "recipe": session.recipe.to_dict(),
                              "environment": session.environment, "results": session.results}, default=str))
        else:
            from workbench.cli.render import print_session

            print_session(session)
        return EXIT_OK
    if args.action == "delete":
        if not store.exists(args.name):
            store.open(args.name)  # raises the not-found error
        if not args.yes:
            if not sys.stdin.isatty():
                raise InputError(f"sessions delete {args.name}: needs --yes when not at a terminal")
            if input(f"delete session {args.name!r} and its artifact? [y/N] ").strip().lower() != "y":
                print("kept")
                return EXIT_OK
        store.delete(args.name)
        print(f"deleted {args.name}")
        return EXIT_OK
    if not args.new_name:
        raise InputError("sessions rename: missing NEW name")
    store.rename(args.name, args.new_name)
    print(f"renamed {args.name} -> {args.new_name}")
    return EXIT_OK
