"""Where a speculative verify round's time goes, against a plain graph-decode step (issue 14).

On the H200 a round of ``speculative:method=prompt-lookup`` + ``graph-decode`` on demo:smollm2 cost about 6.3-6.9 ms
where one graph-decode step cost about 2.0 (benchmarks/results/h200_2026-12-03d/speculative_h200_open.md), so
lookup lost (0.87x) on a reply where it accepted 29 % of its drafts. This script splits a round: host time in the
lookup (``_propose``), in the verify call (``_verify``: the input copies, the replay, the ``.tolist()`` that waits
for the GPU), in the cache rewinds (``_rewind``), and the rest of the loop; then the GPU kernel time and kernels
per round from the torch profiler (``gpu_diag.profile_steps``), and the same for plain graph-decode per step.

Usage: python benchmarks/spec_diag.py [--device cuda] [--prompts open,code-edit] [--new-tokens 96]
       [--target-dtype model|bf16] [--out DIR]
On a CPU it runs the eager loop (no graphs: a dry run of the script, its figures are not the GPU's question).
Writes spec_diag_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

HOST_PARTS = ("_propose", "_verify", "_rewind")


def timed_methods(gen, parts=HOST_PARTS) -> dict:
    """Wrap ``gen``'s methods named in ``parts`` to add their wall time (seconds) and calls to the returned dict."""
    acc = {name: [0.0, 0] for name in parts}
    for name in parts:
        inner = getattr(gen, name)

        def wrapped(*a, _inner=inner, _slot=acc[name], **kw):
            t0 = time.perf_counter()
            try:
                return _inner(*a, **kw)
            finally:
                _slot[0] += time.perf_counter() - t0
                _slot[1] += 1

        setattr(gen, name, wrapped)
    return acc


def split_rounds(gen, ids, new: int, calls: int, torch, sync) -> dict:
    """Host time per round by part over ``calls`` generate calls (after one warm call); the prompt's forward
    (``_prefill``) per call, outside the rounds."""
    gen.generate(ids, new)
    acc = timed_methods(gen, HOST_PARTS + ("_prefill",))
    stats = gen.stats
    stats.reset()
    sync()
    t0 = time.perf_counter()
    for _ in range(calls):
        gen.generate(ids, new)
    sync()
    wall = time.perf_counter() - t0
    rounds = acc["_verify"][1]
    for name in HOST_PARTS + ("_prefill",):  # back to the class's own methods
        gen.__dict__.pop(name, None)
    prefill = acc["_prefill"][0]
    parts = {name[1:]: acc[name][0] * 1000 / max(rounds, 1) for name in HOST_PARTS}
    per_round = (wall - prefill) * 1000 / max(rounds, 1)  # the prompt's forward is not a round
    return {"calls": calls, "rounds": rounds, "tokens": calls * new, "prefill_ms_per_call": prefill * 1000 / calls,
            "wall_ms_per_round": per_round, "tokens_per_round": calls * new / max(rounds, 1),
            "host_ms_per_round": parts, "rest_ms_per_round": per_round - sum(parts.values()),
            "stats": dict(stats.live)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo:smollm2")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--prompts", default="open,code-edit")
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--target-dtype", default="model", choices=("model", "bf16"),
                    help="bf16: cast the model first (on a GPU its verify matmuls then run on the tensor cores)")
    ap.add_argument("--draft", default=None,
                    help="a draft model folder (speculative.py --keep-drafts): split its rounds (speculative:"
                         "method=draft, gate=off: _propose is the draft's K steps) instead of prompt lookup's")
    ap.add_argument("--k", type=int, default=3, help="with --draft: tokens drafted per round")
    ap.add_argument("--graph-params", default="",
                    help="graph-decode's parameters for both loops, e.g. fuse=true,verify_attention=decomposed")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()

    import torch

    from speculative import PROMPTS
    from workbench.core import optimizations, quiet
    from workbench.core.measure.env import environment
    from workbench.core.models import load
    from workbench.core.optimizations.context import ApplyContext

    quiet.quiet_libraries()
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    loaded = load(args.model, "causal-lm", args.device)
    model, tok = loaded.model, loaded.tokenizer
    if args.target_dtype == "bf16":
        from workbench.core.optimizations._common import cast

        cast(model, torch.bfloat16)
    spec, graph = optimizations.get("speculative"), optimizations.get("graph-decode")
    graph_params = dict(kv.split("=", 1) for kv in filter(None, args.graph_params.split(",")))

    def generator(speculative: bool, max_len: int):
        gk: dict = {}
        # gate=off: every proposal verified, so the rounds split here are verify rounds (the gate's own effect is
        # measured by speculative.py --graph --gate-off)
        spec_params = ({"method": "draft", "draft": args.draft, "num_tokens": args.k, "gate": "off"} if args.draft
                       else {"method": "prompt-lookup", "gate": "off"})
        steps = [(spec, spec_params)] if speculative else []
        for opt, params in steps + [(graph, graph_params)]:
            ctx = ApplyContext(args.device, "causal-lm", tok, log=lambda t: print("  " + t, flush=True))
            ctx.extra["generate_kwargs"] = gk
            opt.apply(model, opt.resolve(params), ctx)
        return gk["optbench_generator"](1, max_len)

    doc: dict = {"model": args.model, "device": args.device, "environment": environment(args.device),
                 "target_dtype": args.target_dtype, "graph_decode_params": graph_params,
                 "new_tokens": args.new_tokens, "prompts": {}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"spec_diag_{'draft_' if args.draft else ''}{'cuda' if cuda else 'cpu'}.json"
    doc["method"] = f"draft ({args.draft}, k={args.k})" if args.draft else "prompt-lookup"
    kind = "draft" if args.draft else "lookup"  # the row's key for the speculative rounds
    for name in args.prompts.split(","):
        _, text = PROMPTS[name]
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"].to(args.device)
        max_len = ids.shape[1] + args.new_tokens
        row: dict = {}
        lookup = generator(True, max_len)  # the speculative loop (prompt lookup, or the draft model)
        row[kind] = split_rounds(lookup, ids, args.new_tokens, args.calls, torch, sync)
        plain = generator(False, max_len)
        plain.generate(ids, args.new_tokens)
        sync()
        t0 = time.perf_counter()
        for _ in range(args.calls):
            plain.generate(ids, args.new_tokens)
        sync()
        per_token = (time.perf_counter() - t0) * 1000 / (args.calls * args.new_tokens)
        row["plain"] = {"wall_ms_per_token_incl_prefill": per_token}
        if cuda:  # kernels per round / per step (profile_steps counts per generated token: scale by tokens/round)
            from gpu_diag import profile_steps

            for key, gen in ((kind, lookup), ("plain", plain)):
                prof = profile_steps(torch, gen, ids, args.new_tokens)
                scale = row[kind]["tokens_per_round"] if key == kind else 1.0
                row[key]["gpu_kernel_ms_per_round" if key == kind else "gpu_kernel_ms_per_step"] = \
                    prof["gpu_kernel_ms_per_step"] * scale
                row[key]["kernels_per_round" if key == kind else "kernels_per_step"] = \
                    prof["kernels_per_step"] * scale
                row[key]["top_kernels"] = prof["top_kernels"][:8]
        lk = row[kind]
        print(f"{name}: round {lk['wall_ms_per_round']:.2f} ms ({lk['tokens_per_round']:.2f} tokens; host "
              + ", ".join(f"{k} {v:.3f}" for k, v in lk["host_ms_per_round"].items())
              + f", rest {lk['rest_ms_per_round']:.3f}); plain {per_token:.2f} ms per token incl. prefill",
              flush=True)
        doc["prompts"][name] = row
        del lookup, plain
        path.write_text(json.dumps(doc, indent=1, default=str))  # after every prompt: a cut run keeps what it had
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
