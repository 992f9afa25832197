"""``optbench info``: hardware and library versions (imports torch: ``info`` is allowed to be heavy)."""

from __future__ import annotations

import json

from workbench.cli.checks import EXIT_OK


def add_parser(sub) -> None:
    i = sub.add_parser("info", help="hardware and library versions")
    i.add_argument("--json", action="store_true")
    i.set_defaults(handler=cmd_info)


def cmd_info(args) -> int:
    from workbench.core.measure import nvml
    from workbench.core.measure.env import environment

    import torch  # noqa: F401  (device details need it; `info` is allowed to be heavy)

    env = environment("cuda" if torch.cuda.is_available() else "cpu")
    env["cuda_available"] = torch.cuda.is_available()
    env["nvml_devices"] = nvml.devices()
    try:
        import torchao  # noqa: F401

        env["torchao_importable"] = True
    except Exception:
        env["torchao_importable"] = False
    if args.json:
        print(json.dumps(env))
    else:
        from workbench.cli.render import print_info

        print_info(env)
    return EXIT_OK
