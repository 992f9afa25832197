"""optbench's command line. No arguments: the TUI. Subcommands: the same engine, headless.

Builds the parser from the command modules (each has ``add_parser(sub)``, which sets its ``cmd_*`` handler as the
``handler`` default) and dispatches. Exit codes: 0 ok, 1 the job failed, 2 bad usage or input, 130 interrupted
(``tune``: 3 when no recipe meets the budget).
"""

from __future__ import annotations

import argparse
import os
import sys

from workbench import __version__
from workbench.cli import export, info, optimizations, recommend, run, serve, sessions, sweep, tune
from workbench.cli.checks import EXIT_INPUT, EXIT_INTERRUPTED, fail
from workbench.core.errors import OptbenchError

COMMANDS = (run, sessions, optimizations, export, info, serve, recommend, sweep, tune)  # the order of --help


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        self.exit(EXIT_INPUT, f"optbench: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="optbench", description="Make Transformer models faster and smaller, measured truthfully. "
                                             "With no command, opens the terminal workbench.")
    p.add_argument("--version", action="version", version=f"optbench {__version__}")
    p.add_argument("--sessions-dir", help="where sessions live (default ./sessions or $OPTBENCH_SESSIONS)")
    p.add_argument("--no-mouse", action="store_true", help="TUI: do not capture the mouse")
    p.add_argument("--model", dest="tui_model", help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    for command in COMMANDS:
        command.add_parser(sub)
    verbose_help = "show library messages (torchao, torch, transformers) that are otherwise kept in a log file"
    p.add_argument("-v", "--verbose", action="store_true", help=verbose_help)
    for sp in sub.choices.values():  # also after the command: `optbench run -v ...`
        sp.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose_help)
    return p


def main(argv: list[str] | None = None) -> int:
    from workbench.core import quiet

    args = build_parser().parse_args(argv)
    if args.verbose:
        os.environ[quiet.VERBOSE_ENV] = "1"  # job processes inherit it
    quiet.quiet_libraries()
    if args.sessions_dir:
        os.environ["OPTBENCH_SESSIONS"] = args.sessions_dir
    try:
        if args.command is None:
            from workbench.tui.app import run_app

            return run_app(model=args.tui_model, mouse=not args.no_mouse)
        return args.handler(args)
    except OptbenchError as exc:
        fail(exc, getattr(args, "json", False))
        return exc.exit_code
    except KeyboardInterrupt:
        print("optbench: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
