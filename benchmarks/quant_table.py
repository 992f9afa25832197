"""The H200 quantization table of issue 13, gathered from the ladder runs on record (no new measurement).

Every row comes from one ``gpu_ladder.py`` process (a *run*). Two ratios per quantized row:

* ``vs bf16, same run``: decode time of the best bf16 rung (graph-decode, any variant) of the same run, model and
  batch, over the row's — the side-by-side figure; blank where that run measured no bf16 rung;
* ``vs best bf16 on record``: over the fastest bf16 decode step measured at that model and batch in any run — the
  conservative figure (machines of one kind differ by up to ~20 % between leases; see the runs' bf16 rows).

Usage: python benchmarks/quant_table.py [--out benchmarks/results/quant_table_h200.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).resolve().parent / "results"
# (run label, file, what it was): JSON documents with "rows", or logs of JSON lines
SOURCES = [
    ("11-28", "gpu_ladder_h200.json", "the first ladder, 2026-11-28 (runs A–F, T, R1 of that file)"),
    ("11-28 V", "gpu_ladder_run5_h200_llama1b_variants.json", "compile variants, 1B batch 1"),
    ("12-01 8B", "gpu_8b_h200.json", "the 8B benchmark's ladder section"),
    ("12-03 L1", "h200_2026-12-03b/l1b/gpu_ladder.json", "GemLite, first lease (ended idle after two rungs)"),
    ("12-03 L2a", "h200_2026-12-03b/lease2/l1b1.log", "GemLite int4 / tinygemm int4, 1B batch 1"),
    ("12-03 L2b", "h200_2026-12-03b/lease2/l1b8.log", "GemLite at 1B batch 8, with its bf16 rung"),
    ("12-03 8B1", "h200_2026-12-03c/l8b1/gpu_ladder.json",
     "GemLite at 8B batch 1, with its bf16 rung (the tinygemm int4 rung ran past the step's time limit)"),
    ("12-03 8B8", "h200_2026-12-03d/l8b8/gpu_ladder.json", "GemLite at 8B batch 8, with its bf16 rung"),
]


def rows_of(path: Path, label: str) -> list[dict]:
    """The ladder rows of one file (ladder_table's reader: a gpu_ladder JSON, or a log's JSON lines; gpu_8b's
    document keeps them under section "ladder"), each labelled with its run."""
    from ladder_table import read

    found = [r for r in read(path)[1] if r.get("section", "ladder") == "ladder" and "rung" in r]
    return [{**r, "run": f"{label} {r['run']}" if "run" in r else label} for r in found]


def base(rung: str) -> str:
    """The ladder's rung without its compile variant ("int4-gl+fuse" -> "int4-gl"; its aliases resolved)."""
    from gpu_ladder import ALIASES

    return ALIASES.get(rung, rung).partition("+")[0]


def is_bf16_best_candidate(rung: str) -> bool:
    return base(rung) == "graph-decode"


def table(rows: list[dict]) -> list[str]:
    from gpu_ladder import QUANT_RUNGS as QUANT

    ok = [r for r in rows if "decode_ms_per_token" in r]
    best_run: dict = {}
    best_any: dict = {}
    for r in ok:
        if is_bf16_best_candidate(r["rung"]):
            key = (r["run"], r["model"], r["batch"])
            best_run[key] = min(best_run.get(key, 1e9), r["decode_ms_per_token"])
            k2 = (r["model"], r["batch"])
            best_any[k2] = min(best_any.get(k2, 1e9), r["decode_ms_per_token"])
    lines = ["| model | batch | rung | run | decode ms/tok | tok/s | vs bf16, same run | vs best bf16 on record | "
             "peak alloc MB | MBU |", "|---|---|---|---|---|---|---|---|---|---|"]
    keep = [r for r in rows if base(r["rung"]) in QUANT or is_bf16_best_candidate(r["rung"])]
    for r in sorted(keep, key=lambda r: (r["model"], r["batch"], base(r["rung"]) in QUANT, r["rung"], r["run"])):
        if "decode_ms_per_token" not in r:
            lines.append(f"| {r['model']} | {r['batch']} | {r['rung']} | {r['run']} | error: {r.get('error', '?')} "
                         f"| | | | | |")
            continue
        t = r["decode_ms_per_token"]
        same = best_run.get((r["run"], r["model"], r["batch"]))
        any_ = best_any.get((r["model"], r["batch"]))
        q = base(r["rung"]) in QUANT
        mbu = f"{100 * r['mbu']:.1f} %" if r.get("mbu") is not None else ""
        lines.append(f"| {r['model']} | {r['batch']} | {r['rung']} | {r['run']} | {t:.3f} | "
                     f"{r['decode_tokens_per_s']:.0f} | {f'{same / t:.2f}×' if q and same else ''} | "
                     f"{f'{any_ / t:.2f}×' if q and any_ else ''} | {r['peak_allocated_mb']:.0f} | {mbu} |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=RESULTS / "quant_table_h200.md")
    args = ap.parse_args()
    rows: list[dict] = []
    for label, name, _ in SOURCES:
        rows += rows_of(RESULTS / name, label)
    lines = ["# Quantized decode on the H200 — every ladder row on record", "",
             "NVIDIA H200, driver 580.159.04, CUDA 13.0, torch 2.11.0+cu130, transformers 5.17.0, torchao 0.18.0, "
             "gemlite 0.6.0.post2, triton 3.6.0. Llama-3.2-1B and Llama-3.1-8B shapes, random-init bf16 weights "
             "(speed only; accuracy: quant_accuracy_h200_smollm2_all.md), 128-token prompt, 128 new tokens, greedy. "
             "Quantized rungs quantize every Linear but the LM head, under graph-decode (`+fuse`: q/k/v and "
             "gate/up fused first, then quantized as one matrix). MBU: weights + KV bytes per step over the copy "
             "bandwidth measured in the same run. Written by `benchmarks/quant_table.py` from the files below.", "",
             *table(rows), "", "Runs:", ""]
    lines += [f"* **{label}** — `{name}`: {what}" for label, name, what in SOURCES]
    lines += ["", "The decode-step matmuls alone (no attention, no launches): `kernel_probe_h200.md`."]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
