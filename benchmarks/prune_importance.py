"""Structured-pruning importance scores compared on real weights: perplexity after removing a fraction of FFN neurons
(and of attention heads) by each importance score, with no fine-tuning.

    .venv/bin/python benchmarks/prune_importance.py [--model demo:smollm2] [--out benchmarks/results/prune_importance_smollm2.json]

Eval: the built-in text, the same settings as ``optbench run`` (4096 tokens, 512-token windows). One process, one
model load, each variant pruned from a fresh deep copy.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo:smollm2")
    ap.add_argument("--fractions", default="0.05,0.125,0.25")
    ap.add_argument("--out", default="benchmarks/results/prune_importance_smollm2.json")
    a = ap.parse_args()

    from workbench.core.data import load_eval
    from workbench.core.evaluate import evaluate
    from workbench.core.measure.env import environment
    from workbench.core.models import load
    from workbench.core.optimizations import prune_structured as ps
    from workbench.core.optimizations.context import ApplyContext
    from workbench.core.recipe import EvalSettings

    loaded = load(a.model, None, "cpu", False, None)
    es = EvalSettings()
    data = load_eval(es, loaded.task)
    base, ref = evaluate(loaded.model, loaded.tokenizer, loaded.task, data, es, "cpu", None)
    rows = []
    print(f"baseline: {json.dumps({k: round(v, 4) for k, v in base.items() if isinstance(v, float)})}")
    ctx = ApplyContext(device="cpu", task=loaded.task, tokenizer=loaded.tokenizer, log=lambda t: None,
                       progress=lambda *x, **k: None, eval_settings=es)
    for kind in ("ffn", "heads"):
        for frac in [float(x) for x in a.fractions.split(",")]:
            for imp in ("magnitude", "activation", "gradient"):
                m = copy.deepcopy(loaded.model)
                t0 = time.perf_counter()
                fn = ps.prune_ffn if kind == "ffn" else ps.prune_heads
                rep = fn(m, ctx, frac, imp, {"calib_batches": 8, "calib_data": "builtin"})
                secs = time.perf_counter() - t0
                met, _ = evaluate(m, loaded.tokenizer, loaded.task, data, es, "cpu", ref)
                row = {"unit": kind, "fraction": frac, "importance": imp, "score_seconds": round(secs, 2),
                       **{k: v for k, v in met.items() if isinstance(v, (int, float))},
                       "after": rep.get("ffn_after", rep.get("heads_after"))}
                rows.append(row)
                print(f"{kind:5s} {frac:5.3f} {imp:10s} ppl {met.get('perplexity', float('nan')):12.2f} "
                      f"kl {met.get('kl_divergence', float('nan')):.4f}  ({secs:.1f} s to score+slice)")
                del m
    doc = {"model": a.model, "eval": {"source": data.source, "token_budget": es.token_budget, "window": es.window},
           "baseline": base, "rows": rows, "environment": environment("cpu")}
    Path(a.out).write_text(json.dumps(doc, indent=1, default=str))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
