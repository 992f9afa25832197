"""Why does the draft head accept so little on the speculative benchmark's prompts? One head, three measurements
per prompt, side by side (speculative:method=draft-head, real weights):

* ``runtime``: the acceptance rate the verify-step loop (HeadGreedy) reports generating the prompt's reply;
* ``teacher-forced``: the head's top-1 agreement on the same reply, computed from the target's features over
  prompt + reply in one forward (``spec_head.agreement``, the figure the head's training reports as held-out);
* ``in vocab``: the share of the reply's tokens inside the head's draft vocabulary (a token outside it can never
  be drafted).

If runtime is far below teacher-forced, the loop hands the head something other than what it trained on; if both
are low, the replies are out of the head's training distribution; if ``in vocab`` is low, the draft vocabulary is.

Usage: python benchmarks/draft_head_diag.py [--head-seconds 150] [--new-tokens 96] [--out DIR]
Writes draft_head_diag_<device>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="demo:smollm2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--head-seconds", type=float, default=150.0)
    ap.add_argument("--head-chats", type=int, default=96)
    ap.add_argument("--head-k", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--min-new", action="store_true",
                    help="force new-tokens tokens past the end of the reply, as speculative.py does")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()

    import torch

    from speculative import PROMPTS
    from workbench.core import optimizations, quiet
    from workbench.core.measure.env import environment
    from workbench.core.models import load
    from workbench.core.optimizations import spec_head
    from workbench.core.optimizations.context import ApplyContext

    quiet.quiet_libraries()
    loaded = load(args.model, "causal-lm", args.device)
    model, tok = loaded.model, loaded.tokenizer
    spec = optimizations.get("speculative")
    ctx = ApplyContext(args.device, "causal-lm", tok, log=lambda t: print("  " + t, flush=True))
    ctx.extra["generate_kwargs"] = {}
    t0 = time.perf_counter()
    rep = spec.apply(model, spec.resolve({"method": "draft-head", "distill_seconds": args.head_seconds,
                                          "head_chats": args.head_chats, "num_tokens": args.head_k}), ctx).report
    setup = time.perf_counter() - t0
    gk = ctx.extra["generate_kwargs"]
    head, stats = gk["optbench_speculative"]["head"], rep["stats"]
    vocab = set(head.vocab.tolist())
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rows = []
    for name, (kind, text) in PROMPTS.items():
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"].to(args.device)
        p = ids.shape[1]
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                                 min_new_tokens=args.new_tokens if args.min_new else 0, do_sample=False,
                                 pad_token_id=pad)
        reply = out[0, p:].tolist()
        n = len(reply)
        gen = gk["optbench_generator"](1, p + args.new_tokens)
        stats.clear()
        stats.update({"calls": 0, "tokens": 0, "target_forwards": 0, "proposed": 0})
        got = gen.generate(ids, n)
        runtime = dict(stats)
        # teacher-forced over the reply: positions p-1 .. end (the head starts from the prompt's last feature)
        f, y, x = spec_head.features(model, [{"input_ids": out}])
        # in the head's run-time dtype (draft_dtype), as the loop runs it
        f = f.to(head.rows.dtype)
        tf = spec_head.agreement(head, f[:, p - 1:], y[:, p - 1:], x[:, p - 1:], depth=args.head_k)
        row = {"prompt": name, "reply_tokens": n, "identical": got[0, p:].tolist() == reply,
               "runtime_acceptance": runtime.get("acceptance_rate"),
               "runtime_tokens_per_forward": runtime.get("tokens_per_target_forward"),
               "teacher_forced_agreement": [round(a, 4) for a in tf],
               # what the runtime rate would be if each round started where teacher forcing does
               "teacher_forced_acceptance": round(sum(tf) / len(tf), 4),
               "in_vocab": round(sum(t in vocab for t in reply) / max(1, n), 4),
               "reply": tok.decode(reply)}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "reply"}), flush=True)
    doc = {"environment": environment(args.device), "model": args.model, "setup_seconds": round(setup, 1),
           "head": {k: v for k, v in rep.items() if k not in ("stats", "greedy_check")}, "min_new": args.min_new,
           "rows": rows}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"draft_head_diag_{args.device}" + ("_minnew" if args.min_new else "")
    (out_dir / f"{stem}.json").write_text(json.dumps(doc, indent=1, default=str))
    env = doc["environment"]
    lines = [f"# Draft head diagnostic — {env.get('cpu_model') or env.get('device_name')}", "",
             f"{args.model}, head trained {rep['head_training']['seconds']:.0f} s ({rep['head_training']['steps']} "
             f"steps), held-out agreement {rep['held_out_agreement']}, {args.head_k} drafts per round, draft vocab "
             f"{rep['draft_vocab']}; replies {'forced to' if args.min_new else 'up to'} {args.new_tokens} tokens.", "",
             "| prompt | reply tokens | runtime acceptance | tokens / forward | teacher-forced agreement (1st, 2nd, 3rd) "
             "| teacher-forced acceptance | reply tokens in draft vocab | identical |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['prompt']} | {r['reply_tokens']} | {r['runtime_acceptance']:.3f} | "
                     f"{r['runtime_tokens_per_forward']:.2f} | {', '.join(f'{a:.2f}' for a in r['teacher_forced_agreement'])} | "
                     f"{r['teacher_forced_acceptance']:.3f} | {r['in_vocab']:.2f} | {r['identical']} |")
    (out_dir / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
