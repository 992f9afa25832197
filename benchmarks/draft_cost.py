"""What a speculative draft costs per token next to its target, on this machine: demo:smollm2 (or --model) as
the target in fp32 and bf16, and drafts built from it — k of its blocks (the raw subset speculative's
``draft=layers`` starts from), with the full LM head or its ``--vocab`` most frequent rows (``draft_vocab``), in
fp32 and bf16 — each timed as a plain greedy ``generate`` of ``--new-tokens`` tokens (median of ``--iters``),
ms/token. Speculation pays only when (tokens per target forward) > 1 + drafts-per-round x (draft / target cost)
plus the verify pass's extra: this table is the cost side of that inequality. Acceptance needs the trained
draft: benchmarks/speculative.py.

Usage: python benchmarks/draft_cost.py [--blocks 8,4] [--vocab 8192,4096] [--out benchmarks/results]
Writes draft_cost_<device>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo:smollm2")
    ap.add_argument("--blocks", default="8,4")
    ap.add_argument("--vocab", default="8192,4096")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()

    import torch

    from workbench.core import quiet
    from workbench.core.measure.env import environment
    from workbench.core.models import load
    from workbench.core.optimizations import _spec_student, distill, speculative
    from workbench.core.optimizations._common import cast

    quiet.quiet_libraries()
    loaded = load(args.model, "causal-lm", "cpu")
    model, tok = loaded.model.eval(), loaded.tokenizer
    ids = tok("def summarize(records, key, threshold=0.5):\n    total = 0\n    for record in records:\n",
              return_tensors="pt").input_ids
    kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
              min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=tok.eos_token_id)

    def ms(mod) -> float:
        times = []
        with torch.inference_mode():
            mod.generate(**kw)
            for _ in range(args.iters):
                t0 = time.perf_counter()
                mod.generate(**kw)
                times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2] * 1000 / args.new_tokens

    rows = [{"what": "target", "dtype": "fp32", "ms_per_token": ms(model)}]
    target_bf16 = copy.deepcopy(model)
    cast(target_bf16, torch.bfloat16)
    rows.append({"what": "target", "dtype": "bf16", "ms_per_token": ms(target_bf16)})
    del target_bf16
    print(json.dumps(rows[-2:]), flush=True)
    for k in (int(x) for x in args.blocks.split(",")):
        dparams = _spec_student.optimizations_params("distill", {"student": "layers", "keep": k, "steps": 1,
                                                               "checkpoint": "none"})
        for dtype in ("fp32", "bf16"):
            for vocab in [0] + [int(x) for x in args.vocab.split(",")]:
                draft, _ = distill.build_student(model, dparams, "causal-lm")
                draft.eval()
                if vocab:
                    speculative.shrink_head(draft, vocab, tok)
                if dtype == "bf16":
                    cast(draft, torch.bfloat16)
                rows.append({"what": f"{k} blocks", "dtype": dtype, "vocab": vocab or "all",
                             "ms_per_token": ms(draft)})
                print(json.dumps(rows[-1]), flush=True)
    for r in rows:
        r["vs_target_same_dtype"] = r["ms_per_token"] / next(
            t["ms_per_token"] for t in rows if t["what"] == "target" and t["dtype"] == r["dtype"])
    env = environment("cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "draft_cost_cpu.json").write_text(json.dumps({"model": args.model, "environment": env,
                                                         "new_tokens": args.new_tokens, "rows": rows},
                                                        indent=1, default=str))
    print(f"\n{env.get('device_name')} ({(env.get('cpu_isa') or {}).get('summary', '')}), torch {env.get('torch')}")
    print("| model | dtype | head rows | ms/token | vs target (same dtype) |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['dtype']} | {r.get('vocab', 'all')} | {r['ms_per_token']:.1f} | "
              f"{r['vs_target_same_dtype']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
