"""``optbench sweep``: batch-size sweep, throughput vs latency and the knee of the curve (in this process; imports
torch when called)."""

from __future__ import annotations

import json
import sys

from workbench.cli.args import TASKS
from workbench.cli.checks import EXIT_OK, check_positive
from workbench.core.errors import InputError


def add_parser(sub) -> None:
    s = sub.add_parser("sweep", help="batch-size sweep: throughput vs latency and the knee of the curve")
    s.add_argument("--model", required=True)
    s.add_argument("--opt", action="append", default=[], metavar="NAME[:k=v,...]",
                   help="optimizations applied before sweeping (repeatable, in order)")
    s.add_argument("--task", choices=TASKS)
    s.add_argument("--device", default="auto")
    s.add_argument("--batches", default="1,2,4,8,16,32", help="comma-separated batch sizes (default 1,2,4,8,16,32)")
    s.add_argument("--seq-len", type=int, default=128)
    s.add_argument("--new-tokens", type=int, default=32)
    s.add_argument("--warmup", type=int, default=1)
    s.add_argument("--min-iters", type=int, default=3)
    s.add_argument("--min-seconds", type=float, default=1.0)
    s.add_argument("--knee", type=float, default=0.9, help="knee: smallest batch reaching this fraction of the best "
                                                          "throughput (default 0.9)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=cmd_sweep)


def cmd_sweep(args) -> int:
    from workbench.core import modelref, optimizations
    from workbench.core.sweep import batch_sweep, parse_batches

    modelref.resolve(args.model)
    batches = parse_batches(args.batches)
    opts = [optimizations.parse_opt_arg(o) for o in args.opt]
    for name, params in opts:
        optimizations.get(name).resolve(params)
    check_positive("seq-len", args.seq_len, 0, 131072)
    if args.new_tokens < 2:
        raise InputError(f"--new-tokens {args.new_tokens}: expected at least 2")

    def log(text: str) -> None:
        if not args.json:
            print(text, file=sys.stderr)

    def on_point(p: dict) -> None:
        if args.json:
            return
        if "error" in p:
            print(f"batch {p['batch']:>5}: {p['error']}", file=sys.stderr)
        else:
            print(f"batch {p['batch']:>5}: p50 {p['latency_ms']:9.2f} ms  {p['throughput']:10.1f} "
                  f"{p['throughput_unit']}", file=sys.stderr)

    result = batch_sweep(args.model, batches, opts, task=args.task, device=args.device, seq_len=args.seq_len,
                         new_tokens=args.new_tokens, warmup=args.warmup, min_iters=args.min_iters,
                         min_seconds=args.min_seconds, knee_fraction=args.knee, log=log, on_point=on_point)
    if args.json:
        print(json.dumps({"ok": True, **result}, default=str))
        return EXIT_OK
    from workbench.cli.render import print_sweep

    print_sweep(result)
    return EXIT_OK
