"""Tensor parallelism against pipeline placement on one multi-GPU host: a Llama-3.1-70B-shaped model (random init,
bf16, built on the machine by ``build_model.py``), batch 1 and 8, 128 prompt + 128 new tokens, each of

  tp N                 ``optbench run --model DIR --device cuda --tp N``: N ranks under torchrun, NCCL
  device_map balanced  ``optbench run --model DIR --device cuda --device-map balanced`` on the same N GPUs
                       (accelerate's placement: one GPU works at a time)

for N in ``--degrees`` (default 4 and 8, as many as the host has), through the workbench's own job (core/jobs/client
``Job``: the launcher, the pipeline's bench loop, the report), eval off. Per row: decode tok/s, TTFT, decode
ms/token, per-GPU peak memory (torch's peak allocated on every rank / device, and NVML's used memory from rank 0's
monitor), load seconds, and MBU summed over the GPUs: (weight bytes + KV cache bytes read per decode step) / step
time / (N x one GPU's measured copy bandwidth). Rows go to ``--out``/rows.jsonl as they finish; the results
(benchmarks/results/gpu_tp_h200x{G}.{json,md}, G = visible GPUs) are rewritten after every row.

The targets of issue 16: tp 8 batch 1 decode >= 4x device_map balanced on the same 8 GPUs, and >= 50 % aggregate MBU
at tp 8 batch 1. The all-reduce time per step is not profiled here.

Usage (GPU host):  python benchmarks/build_model.py llama-70b /tmp/llama-70b
                   python benchmarks/gpu_tp.py --model /tmp/llama-70b --out $OUT
CPU smoke test:    python benchmarks/gpu_tp.py --smoke --out /tmp/gpu_tp_smoke
                   (a tiny Llama built on the CPU, tp 2 over gloo, batch 1 and 8, a few tokens; no device_map rows:
                   those need CUDA; results to --out, not benchmarks/results)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

BANDWIDTH_SNIPPET = """
import json, sys
sys.path.insert(0, sys.argv[1])
import torch
if torch.cuda.is_available():
    import gpu_ladder
    print(json.dumps({"copy_bandwidth_Bps": gpu_ladder.copy_bandwidth(torch), "gpu": torch.cuda.get_device_name(0),
                      "gpus": torch.cuda.device_count()}))
else:
    from workbench.core.recommend import measure_cpu
    print(json.dumps({"copy_bandwidth_Bps": measure_cpu()["copy_gb_s"] * 1e9, "gpu": None, "gpus": 0}))
"""


def log(msg: str) -> None:
    print(f"[gpu_tp {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def bandwidth() -> dict:
    """One GPU's copy bandwidth (read + write), measured in a child process so this one never touches a GPU."""
    out = subprocess.run([sys.executable, "-c", BANDWIDTH_SNIPPET, str(HERE)], capture_output=True, text=True,
                         timeout=300, cwd=HERE.parent)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"bandwidth probe failed: {out.stderr[-500:]}")
    return json.loads(lines[-1])


def bytes_per_token(config: dict, batch: int, prompt: int, new: int, weight_bytes: float) -> float:
    """Weights read per decode step (the input embedding: one row per token, not the table) + the KV cache read,
    mid-generation; bf16."""
    if not config.get("tie_word_embeddings", False):
        weight_bytes -= config["vocab_size"] * config["hidden_size"] * 2
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    kv = 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * (prompt + new / 2) * 2 * batch
    return weight_bytes + kv


def run_one(folder: str, label: str, tp: int | None, device_map: str | None, gpus: int, batch: int, prompt: int,
            new: int, device: str, bench: dict, bw: float, timeout: float) -> dict:
    from workbench.core.jobs.client import Job
    from workbench.core.recipe import BenchSettings, EvalSettings, ModelSpec, Recipe, precheck

    row = {"key": f"{label}@{batch}", "label": label, "tp": tp, "device_map": device_map, "gpus": gpus,
           "batch": batch, "prompt": prompt, "new_tokens": new, "device": device}
    t0 = time.perf_counter()
    recipe = Recipe(ModelSpec(folder, tp=tp, device_map=device_map), [],
                    BenchSettings(batch=batch, seq_len=prompt, new_tokens=new, **bench), EvalSettings(source="none"),
                    device=device)
    env = {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(gpus))} if device == "cuda" else None
    try:
        recipe = precheck(recipe)
        job = Job({"job": "run", "recipe": recipe.to_dict(), "artifact_dir": None}, env=env)
        final, error, nvml_peak, plan = None, None, {}, None
        deadline = time.monotonic() + timeout
        for event in job.events(timeout=timeout):
            if event["type"] == "result" and event.get("phase") == "final":
                final = event["report"]
            elif event["type"] == "error":
                error = event
            elif event["type"] == "sample":
                for g in event.get("gpus") or []:
                    if g.get("mem_used_mb") is not None:
                        nvml_peak[g["index"]] = max(nvml_peak.get(g["index"], 0.0), g["mem_used_mb"])
            elif event["type"] == "log" and "memory plan at tp" in event.get("text", ""):
                plan = event["text"]
            if time.monotonic() > deadline:
                job.cancel()
                error = {"message": f"cut off after {timeout:.0f} s"}
                break
        if error is not None or final is None:
            row["error"] = (error or {}).get("message", "the job ended without a result")
            row["stderr_tail"] = list(job.stderr_tail)[-8:]
        else:
            o = final["optimized"]
            mem = o["memory_mb"]
            if mem.get("per_rank"):
                per_gpu = {r["device"]: r["cuda_peak_allocated_mb"] for r in mem["per_rank"]}
            else:
                per_gpu = mem.get("cuda_peak_allocated_per_device") or {device: mem.get("cuda_peak_allocated")}
            t_tok = o["decode_ms_per_token"]["p50"] / 1000
            config = json.loads((Path(folder) / "config.json").read_text())
            need = bytes_per_token(config, batch, prompt, new, o["model_size_mb"] * 1e6)
            row.update({
                "dtype": o["dtype"], "ttft_ms": o["ttft_ms"]["p50"], "decode_ms_per_token": o["decode_ms_per_token"]["p50"],
                "decode_tokens_per_s": o["throughput"]["value"], "latency_ms": o["latency_ms"]["p50"],
                "timed_runs": o["latency_ms"]["count"], "stopped_early": o.get("stopped_early"),
                "peak_allocated_mb_per_gpu": per_gpu, "nvml_used_peak_mb_per_gpu": nvml_peak or None,
                "load_seconds": final["load_seconds"], "bytes_per_token": need,
                "achieved_GBps": need / t_tok / 1e9, "mbu_summed": need / t_tok / (bw * gpus) if bw else None,
                "copy_bandwidth_Bps_per_gpu": bw, "memory_plan": plan, "estimate_mb": final.get("estimate_mb"),
                "environment": {k: final["environment"].get(k) for k in ("tp", "tp_backend", "tp_devices", "torch",
                                                                         "transformers", "gpus", "device_name")},
            })
    except Exception as exc:  # a refusal (precheck) or a launcher problem: the row says so
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    row["seconds"] = time.perf_counter() - t0
    log(f"{row['key']}: " + (row.get("error") or f"{row['decode_tokens_per_s']:.1f} tok/s, TTFT "
                                                 f"{row['ttft_ms']:.1f} ms, MBU {100 * (row['mbu_summed'] or 0):.1f} %"))
    return row


def markdown(rows: list[dict], meta: dict) -> str:
    def f(v, fmt="{:.1f}"):
        return "—" if v is None else fmt.format(v)

    lines = [f"# Tensor parallelism vs pipeline placement ({meta.get('gpu') or 'CPU'} x{meta.get('gpus')})", "",
             f"Model: {meta['model']} ({meta['config']}, "
             f"{', '.join(sorted({r['dtype'] for r in rows if r.get('dtype')})) or '?'}, random init); prompt {meta['prompt']} + "
             f"{meta['new_tokens']} new tokens, greedy; eval off. Copy bandwidth per GPU (read + write): "
             f"{f(meta.get('copy_bandwidth_Bps', 0) / 1e12, '{:.2f}')} TB/s. MBU summed over the row's GPUs.",
             "", "| run | batch | GPUs | decode tok/s | TTFT ms | decode ms/tok | MBU (sum) | peak alloc MB per GPU | "
                 "load s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['label']} | {r['batch']} | {r['gpus']} | error: {r['error'][:120]} | | | | | |")
            continue
        peaks = ", ".join(f"{v:.0f}" for v in (r["peak_allocated_mb_per_gpu"] or {}).values() if v is not None)
        lines.append(f"| {r['label']} | {r['batch']} | {r['gpus']} | {f(r['decode_tokens_per_s'])} | "
                     f"{f(r['ttft_ms'])} | {f(r['decode_ms_per_token'], '{:.2f}')} | "
                     f"{f(100 * r['mbu_summed'] if r['mbu_summed'] is not None else None)} % | {peaks} | "
                     f"{f(r['load_seconds'])} |")
    by = {r["key"]: r for r in rows if not r.get("error")}
    lines += ["", "## Targets (issue 16)", ""]
    top = max([r["gpus"] for r in rows if r.get("tp")] or [0])
    tp_row, dm_row = by.get(f"tp {top}@1"), by.get(f"device_map balanced x{top}@1")
    if tp_row and dm_row:
        ratio = tp_row["decode_tokens_per_s"] / dm_row["decode_tokens_per_s"]
        lines.append(f"- tp {top} batch 1 decode vs device_map balanced on the same {top} GPUs: **{ratio:.2f}x** "
                     f"(target >= 4x: {'met' if ratio >= 4 else 'not met'})")
    else:
        lines.append(f"- tp {top} vs device_map balanced at batch 1: not both measured")
    if tp_row and tp_row.get("mbu_summed") is not None:
        mbu = tp_row["mbu_summed"]
        lines.append(f"- aggregate MBU at tp {top} batch 1: **{100 * mbu:.1f} %** (target >= 50 %: "
                     f"{'met' if mbu >= 0.5 else 'not met'})")
    lines += ["- all-reduce time per decode step: not profiled by this script", "",
              f"Rows: {meta['out']}/rows.jsonl. Generated by benchmarks/gpu_tp.py"
              f"{' --smoke (CPU, gloo: no GPU figures)' if meta.get('smoke') else ''}."]
    return "\n".join(lines) + "\n"


def write_results(rows: list[dict], meta: dict, results: Path, stem: str) -> None:
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    (results / f"{stem}.md").write_text(markdown(rows, meta))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a model folder (build_model.py llama-70b DIR); built into --out when absent")
    ap.add_argument("--config", default="llama-70b", help="build_model.py config to build when --model is absent")
    ap.add_argument("--out", required=True, help="scratch folder: rows.jsonl (and the built model)")
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--degrees", default="4,8", help="comma-separated GPU counts N (tp N and device_map over N)")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--only", default="tp,device_map", help="tp, device_map or both")
    ap.add_argument("--timeout", type=float, default=1500, help="seconds per run (load included)")
    ap.add_argument("--smoke", action="store_true", help="CPU end-to-end check: tiny Llama, tp 2 over gloo")
    args = ap.parse_args()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.smoke else "cuda"
    if args.smoke:
        args.config, args.degrees, args.prompt, args.new_tokens = "tiny-llama", "2", 16, 8
        bench = {"warmup": 1, "min_iters": 2, "min_seconds": 0.0, "max_seconds": 30.0}
        results, stem = out, "gpu_tp_smoke_cpu"
    else:
        bench = {"warmup": 2, "min_iters": 3, "min_seconds": 5.0, "max_seconds": 180.0}
        results, stem = Path(args.results), None
    folder = args.model
    if not folder or not (Path(folder) / "config.json").is_file():
        # in a child process: this one must hold no CUDA context (it would sit on GPU 0 during every run)
        folder = str(Path(folder) if folder else out / args.config)
        log(f"building {args.config} into {folder} on {device}")
        subprocess.run([sys.executable, str(HERE / "build_model.py"), args.config, folder, "--device", device],
                       check=True, cwd=HERE.parent)
    probe = bandwidth()
    gpus_here = probe["gpus"]
    stem = stem or f"gpu_tp_h200x{gpus_here}"
    degrees = [int(d) for d in args.degrees.split(",") if d.strip()]
    if not args.smoke:
        degrees = [d for d in degrees if d <= gpus_here] or [gpus_here]
    meta = {"model": folder, "config": args.config, "prompt": args.prompt, "new_tokens": args.new_tokens,
            "gpu": probe["gpu"], "gpus": gpus_here if not args.smoke else 0, "copy_bandwidth_Bps": probe[
                "copy_bandwidth_Bps"], "degrees": degrees, "bench": bench, "out": str(out), "smoke": args.smoke,
            "nccl_nvls_enable": "0 (set by the launcher for every tp run)"}
    rows_file = out / "rows.jsonl"
    rows = []
    only = set(args.only.split(","))
    for n in degrees:
        for batch in [int(b) for b in args.batches.split(",")]:
            plan = []
            if "tp" in only:
                plan.append((f"tp {n}", n, None))
            if "device_map" in only and not args.smoke:
                plan.append((f"device_map balanced x{n}", None, "balanced"))
            for label, tp, dm in plan:
                row = run_one(folder, label, tp, dm, n, batch, args.prompt, args.new_tokens, device, bench,
                              probe["copy_bandwidth_Bps"], args.timeout)
                rows.append(row)
                with rows_file.open("a") as fh:
                    fh.write(json.dumps(row, default=str) + "\n")
                write_results(rows, meta, results, stem)
    log(f"wrote {results / stem}.json and .md")
    return 0 if all(not r.get("error") for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
