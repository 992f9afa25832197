"""optbench's command line (``optbench = "workbench.cli:main"``).

main.py builds the parser and dispatches; one module per command (run, sessions, optimizations, export, serve,
info, recommend, sweep, tune), each with ``add_parser(sub)`` and its ``cmd_*`` handler; shared pieces in args.py
(arguments, the Recipe from them), checks.py (exit codes, prechecks, error rendering), progress.py and render.py
(rich output). Commands never import main, and none imports another command.

``main`` below is the function: ``from workbench.cli import main``. The module is ``workbench.cli.main`` in
``sys.modules`` (``from workbench.cli.main import build_parser`` works; ``workbench.cli.main.build_parser`` does not).
"""

from workbench.cli.main import main

__all__ = ["main"]
