"""Distillation on several GPUs (or CPU processes) with DistributedDataParallel, launched by torchrun:

    torchrun --nproc_per_node 2 -m workbench.core.distill_run --model demo:smollm2 --out student/ \\
        --param steps=200 --param batch=8 --param precision=bf16

Every rank loads the teacher, builds the same student and trains on its share of the batches (the ``distill``
optimization's loop, which wraps the student in DDP when torch.distributed is initialised). Rank 0 saves the student
with ``save_pretrained`` and prints one JSON report on stdout. Backend: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m workbench.core.distill_run")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, help="folder for the student (rank 0 writes it)")
    p.add_argument("--task", default=None)
    p.add_argument("--device", default="auto", help="auto: cuda:LOCAL_RANK when CUDA is available, else cpu")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="a distill parameter")
    args = p.parse_args(argv)

    import torch
    import torch.distributed as dist

    from workbench.core import optimizations
    from workbench.core.models import load
    from workbench.core.optimizations.context import ApplyContext

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if args.device == "auto":
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    else:
        device = args.device
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    launched = "WORLD_SIZE" in os.environ
    if launched and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    try:
        spec = optimizations.get("distill")
        raw = dict(item.split("=", 1) for item in args.param)
        params = spec.resolve(raw)
        loaded = load(args.model, args.task, device)

        def log(text: str) -> None:
            if rank == 0:
                print(text, file=sys.stderr, flush=True)

        ctx = ApplyContext(device=device, task=loaded.task, tokenizer=loaded.tokenizer, log=log)
        applied = spec.apply(loaded.model, params, ctx)
        student, rep = applied.model, applied.report
        if dist.is_initialized():
            dist.barrier()
        if rank == 0:
            student.save_pretrained(args.out, safe_serialization=True)
            loaded.tokenizer.save_pretrained(args.out)
            print(json.dumps({"ok": True, "out": args.out, "report": rep}, default=str))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
