"""onednn-linear on this CPU: plain nn.Linear against oneDNN-packed weights, side by side in one run.

Interleaved rounds (plain, then packed, every round) on the same model object (``unpack_linears`` / ``pack_linears``
toggle it):
- demo:smollm2 decode: optbench's own ``bench_causal`` (greedy, batch 1) — decode ms/token;
- demo:smollm2 forward of M = 1, 4, 11 positions on a 64-token cache (a decode step, and the verify step of a
  speculative round drafting 3 or 10 tokens) — ms per forward, and each M's cost in one-token steps;
- demo:minilm encoder batch (8 x 128 tokens) — ms per batch.
Medians over rounds of per-round medians; ratios are plain / packed of the same round set.

Usage: .venv/bin/python benchmarks/onednn_linear.py [--rounds 5] [--out benchmarks/results]
Writes onednn_linear_<cpu>.json and .md (cpu: the ISA label, e.g. avx2, avx512-bf16).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def forward_ms(torch, model, ids, m: int, reps: int) -> float:
    """Median ms of one forward of ``m`` new positions after ``ids`` (the cache cropped back every time)."""
    from transformers import DynamicCache

    with torch.inference_mode():
        cache = DynamicCache()
        model(input_ids=ids, cache=cache, use_cache=True)
        x = ids[:, -m:]
        times = []
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            model(input_ids=x, cache=cache, use_cache=True)
            times.append((time.perf_counter() - t0) * 1000)
            cache.crop(-m)
    return statistics.median(times[1:])


def encoder_ms(torch, model, batch: dict, reps: int) -> float:
    with torch.inference_mode():
        model(**batch)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            model(**batch)
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5, help="forwards per measurement")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()

    import torch

    from workbench.core import quiet
    from workbench.core.measure.cpu import describe
    from workbench.core.measure.env import environment
    from workbench.core.measure.timing import bench_causal
    from workbench.core.models import load
    from workbench.core.optimizations.onednn_linear import pack_linears, unpack_linears
    from workbench.core.recipe import BenchSettings

    quiet.quiet_libraries()
    env = environment("cpu")
    isa = describe()
    label = "avx512-bf16" if isa.get("bf16_native") else "avx512" if "AVX512" in str(isa.get("summary")) else "avx2"
    lm = load("demo:smollm2", "causal-lm", "cpu")
    enc = load("demo:minilm", "encoder", "cpu")
    tok = lm.tokenizer
    ids = tok("The quick brown fox jumps over the lazy dog. " * 8, return_tensors="pt")["input_ids"][:, :64]
    eb = enc.tokenizer(["A sentence about packed weights and CPU kernels."] * 8, padding="max_length",
                       max_length=128, truncation=True, return_tensors="pt")
    settings = BenchSettings(batch=1, new_tokens=args.new_tokens, warmup=1, min_iters=2, min_seconds=0.0)
    names = ["decode ms/token (bench_causal)", "forward M=1 ms", "forward M=4 ms", "forward M=11 ms",
             "minilm 8x128 ms"]
    per = {v: {n: [] for n in names} for v in ("plain", "packed")}
    pack_s = []
    for r in range(args.rounds):
        for variant in ("plain", "packed"):
            if variant == "packed":
                t0 = time.perf_counter()
                packed = pack_linears(lm.model)["packed"] + pack_linears(enc.model)["packed"]
                pack_s.append(time.perf_counter() - t0)
            res = bench_causal(lm.model, tok, settings, "cpu", prompt_ids=ids)
            row = per[variant]
            row[names[0]].append(res["decode_ms_per_token"]["p50"])
            for m, name in zip((1, 4, 11), names[1:4]):
                row[name].append(forward_ms(torch, lm.model, ids, m, args.reps))
            row[names[4]].append(encoder_ms(torch, enc.model, eb, args.reps))
            if variant == "packed":
                unpack_linears(lm.model)
                unpack_linears(enc.model)
        print(f"round {r + 1}: " + "; ".join(f"{v} " + ", ".join(f"{vals[-1]:.1f}" for vals in per[v].values())
                                             for v in per), flush=True)
    med = {v: {n: statistics.median(vals) for n, vals in rows.items()} for v, rows in per.items()}
    doc = {"cpu": env.get("cpu_isa"), "environment": env, "threads": torch.get_num_threads(), "rounds": args.rounds,
           "new_tokens": args.new_tokens, "packed_layers": packed, "pack_seconds_median": statistics.median(pack_s),
           "medians": med, "samples": per,
           "speedup": {n: med["plain"][n] / med["packed"][n] for n in names},
           "verify_cost_in_steps": {v: {f"M={m}": med[v][f"forward M={m} ms"] / med[v]["forward M=1 ms"]
                                        for m in (4, 11)} for v in med}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"onednn_linear_{label}"
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=1, default=str))
    cpu = (env.get("cpu_isa") or {})
    lines = [f"# onednn-linear on {cpu.get('model', 'this CPU')} ({cpu.get('summary', '')}), "
             f"{torch.get_num_threads()} threads, fp32",
             "", f"torch {env.get('torch')}, transformers {env.get('transformers')}. {args.rounds} interleaved rounds "
             f"(plain, packed); medians of per-round medians. Packing {packed} Linear layers took "
             f"{doc['pack_seconds_median']:.2f} s.", "",
             "| measurement | plain nn.Linear | oneDNN packed | speedup |", "|---|---|---|---|"]
    for n in names:
        lines.append(f"| {n} | {med['plain'][n]:.2f} | {med['packed'][n]:.2f} | {doc['speedup'][n]:.2f}× |")
    lines += ["", "A speculative verify step's cost in one-token steps (forward M / forward 1): plain "
              + ", ".join(f"{k} {v:.2f}" for k, v in doc["verify_cost_in_steps"]["plain"].items()) + "; packed "
              + ", ".join(f"{k} {v:.2f}" for k, v in doc["verify_cost_in_steps"]["packed"].items()) + "."]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
