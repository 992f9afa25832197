"""``optbench optimizations``: every registered optimization with its parameters."""

from __future__ import annotations

import json

from workbench.cli.checks import EXIT_OK


def add_parser(sub) -> None:
    o = sub.add_parser("optimizations", help="every registered optimization with its parameters")
    o.add_argument("--json", action="store_true")
    o.set_defaults(handler=cmd_optimizations)


def cmd_optimizations(args) -> int:
    from workbench.core import optimizations

    specs = [s.describe() for s in optimizations.all_specs()]
    if args.json:
        print(json.dumps(specs))
        return EXIT_OK
    from workbench.cli.render import print_optimizations

    print_optimizations(specs)
    return EXIT_OK
