"""The whole workflow at real size: an 8B model folder (``build_model.py``) through optbench on one GPU.

Sections (``--only``, comma-separated; default all):
  bandwidth  device-to-device copy bandwidth (bytes read + written), the MBU ceiling of this run
  load       optbench's loader vs plain ``AutoModelForCausalLM.from_pretrained(folder, dtype="auto",
             device_map=DEVICE)``, interleaved A B B A ..., every load after freeing the previous model; medians
  eval       the built-in perplexity eval (baseline pass, which builds the reference, and a scored pass)
  opts       one ``optbench run --model FOLDER --device DEVICE --opt X --export DIR`` per optimization, through the
             same pipeline.run the CLI's job runs: ok / one-line error, apply seconds, peak device memory during
             the apply vs (baseline weights + optimized weights), export verified and its seconds, decode tok/s
             at batch 1, optbench's memory estimate vs the measured peak
  ladder     ``gpu_ladder.py``'s rungs on the folder's model (batch 1 and 8, 128 + 128 tokens): TTFT, decode
             tok/s, peak memory, MBU against this run's copy bandwidth

Rows go to ``--out``/rows-TAG.jsonl as they finish (a call cut off by its time limit keeps what it did);
``--merge`` folds any number of such files / result JSONs into gpu_8b_h200.{json,md} (a later row replaces an
earlier one of the same key).

Usage (GPU):  python benchmarks/build_model.py llama-8b /tmp/llama-8b
              python benchmarks/gpu_8b.py --model /tmp/llama-8b --config llama-8b --out $OUT
              python benchmarks/gpu_8b.py --merge $OUT/rows-*.jsonl --results benchmarks/results
CPU dry run:  python benchmarks/build_model.py tiny-llama /tmp/tiny --device cpu
              python benchmarks/gpu_8b.py --model /tmp/tiny --config tiny-llama --device cpu --out /tmp/o8
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

# every optimization of the catalogue that applies on CUDA, as a user would type it
OPTS = ["bf16", "int8-weight-only", "int4-weight-only", "fp8-weight-only", "fp8-dynamic", "int8-dynamic-act",
        "sparse-2of4", "int8-selective:scheme=torchao", "prune-ffn", "prune-heads", "drop-layers", "kv-cache",
        "compile", "graph-decode:fuse=true,tuning=coordinate-descent"]
CPU_OPTS = ["bf16", "int8-weight-only", "fp8-weight-only", "int8-dynamic-act", "int8-selective:scheme=torchao",
            "prune-ffn", "prune-heads", "drop-layers", "kv-cache", "graph-decode"]
# the ladder at 8B: rung@batch (rung names as gpu_ladder.py spells them)
LADDER = [f"{r}@{b}" for b in (1, 8) for r in ("hf-sdpa", "static-cache", "graph-decode+fused", "graph-decode+cdt",
                                                "int8-wo+fuse", "int4-wo+fuse", "float8-wo+fuse", "float8-dyn+fuse")]
CPU_LADDER = ["hf-sdpa@1", "graph-decode+fuse@1", "int8-wo+fuse@1"]

TAG = "main"
OUT = Path(".")


def log(msg: str) -> None:
    print(f"[{TAG} {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def emit_row(row: dict) -> None:
    with open(OUT / f"rows-{TAG}.jsonl", "a") as fh:
        fh.write(json.dumps(row, default=str) + "\n")
    log("ROW " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                             if not isinstance(v, (dict, list))}, default=str))


def sync(torch, device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def free(torch, device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def mib(torch, what: str = "allocated") -> float | None:
    if not torch.cuda.is_available():
        return None
    return (torch.cuda.max_memory_allocated() if what == "peak" else torch.cuda.memory_allocated()) / 2**20


# ---------------------------------------------------------------------------------------------------- sections

def section_bandwidth(torch, device: str) -> float:
    import gpu_ladder

    if not device.startswith("cuda"):
        return 1e10
    bw = gpu_ladder.copy_bandwidth(torch)
    emit_row({"section": "bandwidth", "key": "bandwidth", "copy_bandwidth_Bps": bw})
    return bw


def section_load(torch, folder: str, device: str, rounds: int) -> None:
    from transformers import AutoModelForCausalLM

    from workbench.core import models

    # the content fingerprint (baseline-cache key) on its own, first without the memo (a first load), then with it
    ref = models.resolve(folder)
    memo = models.memo_path()
    if memo.exists():
        memo.unlink()
    t0 = time.perf_counter()
    models.fingerprint(ref)
    fp_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    models.fingerprint(ref)
    fp_warm = time.perf_counter() - t0

    def optbench_load():
        return models.load(folder, device=device).model

    def plain_load():
        kw = {"device_map": device} if device.startswith("cuda") else {}
        return AutoModelForCausalLM.from_pretrained(folder, dtype="auto", **kw).eval()

    times: dict[str, list[float]] = {"optbench": [], "plain": []}
    order = []
    for r in range(rounds):
        order += ["optbench", "plain"] if r % 2 == 0 else ["plain", "optbench"]
    # one untimed load each first: the page cache holds the folder for both (it was just written); every timed
    # load then starts with no model on the device
    for which in ["plain", "optbench"] + order:
        free(torch, device)
        t0 = time.perf_counter()
        m = optbench_load() if which == "optbench" else plain_load()
        sync(torch, device)
        dt = time.perf_counter() - t0
        dev = str(next(m.parameters()).device)
        dtype = str(next(m.parameters()).dtype)
        del m
        times[which].append(dt)
        log(f"load {which}: {dt:.2f} s on {dev} ({dtype})")
    for k in times:
        times[k] = times[k][1:]  # drop the untimed first load of each
    a, b = statistics.median(times["optbench"]), statistics.median(times["plain"])
    emit_row({"section": "load", "key": "load", "optbench_median_s": a, "plain_median_s": b, "ratio": a / b,
              "optbench_s": times["optbench"], "plain_s": times["plain"], "fingerprint_first_s": fp_cold,
              "fingerprint_memo_s": fp_warm, "order": order, "target_ratio": 1.2,
              "page_cache": "warm (folder just written); no model on the device before each load"})


def section_eval(torch, folder: str, device: str) -> None:
    from workbench.core.data import load_eval
    from workbench.core.evaluate import eval_causal
    from workbench.core.models import load
    from workbench.core.recipe import EvalSettings

    loaded = load(folder, device=device)
    settings = EvalSettings()
    data = load_eval(settings, "causal-lm")
    row = {"section": "eval", "key": "eval", "token_budget": settings.token_budget, "window": settings.window}
    sync(torch, device)
    t0 = time.perf_counter()
    metrics, ref = eval_causal(loaded.model, loaded.tokenizer, data, settings, device, None)
    sync(torch, device)
    row["baseline_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    scored, _ = eval_causal(loaded.model, loaded.tokenizer, data, settings, device, ref)
    sync(torch, device)
    row["scored_seconds"] = time.perf_counter() - t0
    row["perplexity"] = metrics["perplexity"]
    row["tokens_scored"] = metrics["tokens_scored"]
    row["agreement_with_itself"] = scored["next_token_agreement"]
    row["target_seconds"] = 30
    emit_row(row)
    del loaded
    free(torch, device)


def memory_estimate(folder: str, steps: list[dict], device: str, batch: int, seq: int, new: int) -> dict | None:
    try:
        from workbench.core import recommend

        facts = recommend.model_facts(folder)
        hw = recommend.hardware(device, measure=False)
        est = recommend.estimate(facts, steps, hw, recommend.Constraints(batch=batch, seq_len=seq, new_tokens=new))
        return {k: est[k] for k in ("weights_mb", "kv_cache_mb", "activations_mb", "run_peak_mb", "linear_format")}
    except Exception as exc:  # an estimate that cannot be made is a row note, never a failed row
        return {"error": one_line(exc)}


def section_opt(torch, folder: str, device: str, opt_text: str, scratch: Path, bench_kw: dict) -> None:
    from workbench.core.recipe import precheck
    from workbench.core import optimizations, pipeline
    from workbench.core.recipe import BenchSettings, EvalSettings, ModelSpec, OptStep, Recipe

    name, params = optimizations.parse_opt_arg(opt_text)
    row: dict = {"section": "opt", "key": f"opt:{opt_text}", "opt": opt_text, "ok": False}
    export_dir = scratch / f"export-{TAG}"
    shutil.rmtree(export_dir, ignore_errors=True)
    state: dict = {"stage": None}
    cuda = device.startswith("cuda")

    def emit(kind, **p):
        if kind == "progress":
            st = p.get("stage", "")
            if st.startswith("applying") and state["stage"] != st and cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                state["alloc_before_apply_mb"] = mib(torch)
            if st == "exporting":
                state["export_t0"] = time.perf_counter()
            state["stage"] = st
        elif kind == "log":
            text = p.get("text", "")
            if text.startswith("applied ") and cuda:
                torch.cuda.synchronize()
                state["apply_peak_mb"] = mib(torch, "peak")
                state["alloc_after_apply_mb"] = mib(torch)
            if p.get("level") in ("warning", "error"):
                log(f"{opt_text}: {p.get('level')}: {text.splitlines()[-1][:300] if text else ''}")
        elif kind == "result" and p.get("phase") == "final" and "export_t0" in state:
            state["export_seconds"] = time.perf_counter() - state["export_t0"]

    t0 = time.perf_counter()
    try:
        recipe = Recipe(ModelSpec(folder), [OptStep(name, params)], BenchSettings(**bench_kw), EvalSettings(),
                        device)
        recipe = precheck(recipe)
        rep = pipeline.run(recipe, emit, artifact_dir=str(export_dir))
        base, opt = rep["baseline"], rep["optimized"]
        orep = rep["optimization_reports"][0]
        base_w = base["model_size_mb"] * 1e6 / 2**20
        opt_w = opt["model_size_mb"] * 1e6 / 2**20
        row.update({
            "ok": True, "load_seconds": rep["load_seconds"], "apply_seconds": orep["seconds"],
            "weights_baseline_mib": base_w, "weights_optimized_mib": opt_w,
            "alloc_before_apply_mib": state.get("alloc_before_apply_mb"),
            "apply_peak_mib": state.get("apply_peak_mb"), "alloc_after_apply_mib": state.get("alloc_after_apply_mb"),
            "apply_peak_ratio": (state["apply_peak_mb"] / (base_w + opt_w)) if state.get("apply_peak_mb") else None,
            "baseline_decode_tok_s": (base.get("throughput") or {}).get("value"),
            "optimized_decode_tok_s": (opt.get("throughput") or {}).get("value"),
            "baseline_decode_ms": (base.get("decode_ms_per_token") or {}).get("p50"),
            "optimized_decode_ms": (opt.get("decode_ms_per_token") or {}).get("p50"),
            "optimized_peak_mib": (opt.get("memory_mb") or {}).get("cuda_peak_allocated"),
            "baseline_peak_mib": (base.get("memory_mb") or {}).get("cuda_peak_allocated"),
            "baseline_eval_seconds": base.get("eval_seconds"), "optimized_eval_seconds": opt.get("eval_seconds"),
            "accuracy": {k: {"value": v["value"], "baseline": v["baseline"]} for k, v in rep["accuracy"].items()},
            "speedup": rep["speedup"], "export": rep.get("export"), "export_seconds": state.get("export_seconds"),
            "export_verified": bool((rep.get("export") or {}).get("verified")),
        })
        steps = [{"name": name, "params": orep.get("params") or {}}]
        est = memory_estimate(folder, steps, device, 1, bench_kw["seq_len"], bench_kw["new_tokens"])
        row["estimate"] = est
        if est and "run_peak_mb" in est and row["optimized_peak_mib"]:
            row["estimate_mb"] = est["run_peak_mb"]
            row["estimate_error"] = (est["run_peak_mb"] - row["optimized_peak_mib"]) / row["optimized_peak_mib"]
        rep_small = {k: v for k, v in orep.items() if k not in ("sensitivity", "error_by_kept") and
                     not isinstance(v, (list, dict)) or k in ("params", "kept_fp32")}
        row["report"] = rep_small
    except Exception as exc:
        row["error"] = one_line(exc)
        traceback.print_exc()
    row["seconds"] = time.perf_counter() - t0
    shutil.rmtree(export_dir, ignore_errors=True)
    free(torch, device)
    emit_row(row)


def section_ladder(torch, folder: str, config: str, device: str, rung_at: str, bw: float, prompt: int, new: int,
                   rounds: int) -> None:
    import gpu_ladder
    from build_model import CONFIGS

    from workbench.core.optimizations.fastgen import GraphedGreedy
    from workbench.core.models import load

    gpu_ladder.DEVICE = device
    rung, _, b = rung_at.partition("@")
    batch = int(b or 1)
    base, _, variant = gpu_ladder.ALIASES.get(rung, rung).partition("+")
    cfg = dict(CONFIGS[config][1])
    row: dict = {"section": "ladder", "key": f"ladder:{rung}@{batch}", "model": config, "batch": batch,
                 "rung": rung}
    t0 = time.perf_counter()
    model = gen = None
    try:
        loaded = load(folder, device=device)
        model = loaded.model
        if device == "cpu":
            model.to(torch.bfloat16)
        if base in gpu_ladder.QUANT_RUNGS:
            gpu_ladder.quantize(model, base)
        mode = "graph" if device.startswith("cuda") else "eager"
        if base not in ("hf-eager", "hf-sdpa", "static-cache"):
            kw = gpu_ladder.VARIANTS[variant] if mode == "graph" else {"fuse": gpu_ladder.VARIANTS[variant].get("fuse",
                                                                                                          False)}
            gen = GraphedGreedy(model, batch, prompt + new, mode=mode, **kw)
        r = gpu_ladder.time_rung(torch, model, base, batch, prompt, new, rounds, gen=gen)
        t_tok = r["decode_ms_per_token"]["p50"] / 1000
        need = gpu_ladder.bytes_per_token(model, cfg, batch, prompt, new)
        row.update({
            "ttft_ms": r["ttft_ms"]["p50"], "decode_ms_per_token": r["decode_ms_per_token"]["p50"],
            "decode_tokens_per_s": r["throughput"]["value"], "peak_allocated_mb": r["peak_allocated_mb"],
            "bytes_per_token": need, "achieved_GBps": need / t_tok / 1e9, "mbu": need / t_tok / bw,
            "copy_bandwidth_Bps": bw, "cold_start_ms": r["cold_start_ms"], "timed_runs": r["latency_ms"]["count"],
            "decode_ms_samples": r["decode_ms_per_token"]["samples"],
        })
    except Exception as exc:
        row["error"] = one_line(exc)
        traceback.print_exc()
    row["seconds"] = time.perf_counter() - t0
    del model, gen
    free(torch, device)
    emit_row(row)


# ---------------------------------------------------------------------------------------------------- merge / report

def read_rows(paths: list[str]) -> tuple[list[dict], dict]:
    rows: dict[str, dict] = {}
    env: dict = {}
    for p in paths:
        text = Path(p).read_text()
        if p.endswith(".json"):
            doc = json.loads(text)
            env = doc.get("environment") or env
            items = doc.get("rows", [])
        else:
            items = [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]
        for r in items:
            if r.get("section") == "environment":
                env = r.get("environment") or env
                continue
            rows[r["key"]] = r
    return list(rows.values()), env


def markdown(rows: list[dict], env: dict) -> str:
    def f(v, fmt="{:.2f}"):
        return "—" if v is None else fmt.format(v)

    lines = [f"# optbench at 8B — {env.get('device_name')}", "",
             f"driver {env.get('driver')} · torch {env.get('torch')} · transformers {env.get('transformers')} · "
             f"torchao {env.get('torchao')} · random-init bf16 weights written by `benchmarks/build_model.py` "
             f"(speed and memory only; accuracy figures mean nothing on random weights)", ""]
    by = {s: [r for r in rows if r.get("section") == s] for s in ("bandwidth", "load", "eval", "opt", "ladder")}
    for r in by["bandwidth"]:
        lines.append(f"Copy bandwidth (read + write): **{r['copy_bandwidth_Bps'] / 1e12:.2f} TB/s**")
    for r in by["load"]:
        lines += ["", "## Load", "",
                  f"optbench's loader median **{r['optbench_median_s']:.2f} s** vs plain `from_pretrained(dtype=\"auto\", "
                  f"device_map=...)` **{r['plain_median_s']:.2f} s**: **{r['ratio']:.2f}×** (target ≤ 1.2×; "
                  f"{len(r['optbench_s'])} + {len(r['plain_s'])} loads, interleaved; {r['page_cache']}). "
                  f"Content fingerprint (baseline-cache key): {r['fingerprint_first_s']:.2f} s on a folder's first "
                  f"load, {r['fingerprint_memo_s']:.3f} s after (memo)."]
    for r in by["eval"]:
        lines += ["", "## Eval", "",
                  f"Built-in perplexity eval ({r['tokens_scored']} tokens, {r['window']}-token windows): baseline "
                  f"pass **{r['baseline_seconds']:.2f} s**, scored pass **{r['scored_seconds']:.2f} s** "
                  f"(target < 30 s)."]
    if by["opt"]:
        lines += ["", "## Every optimization through `optbench run --export` (batch 1)", "",
                  "| optimization | ok | apply s | apply peak MiB | base + opt weights MiB | ratio | export | "
                  "export s | decode tok/s base → opt | optimized peak MiB | estimate MiB (error) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in by["opt"]:
            if not r.get("ok"):
                lines.append(f"| {r['opt']} | **failed**: {r.get('error', '')[:160]} | | | | | | | | | |")
                continue
            ex = r.get("export") or {}
            exp = "verified" if r.get("export_verified") else f"no: {str(ex.get('error', ''))[:80]}"
            est = (f"{r['estimate_mb']:.0f} ({r['estimate_error'] * 100:+.0f} %)" if r.get("estimate_mb") else "—")
            lines.append(
                f"| {r['opt']} | yes | {f(r['apply_seconds'], '{:.1f}')} | {f(r.get('apply_peak_mib'), '{:.0f}')} | "
                f"{r['weights_baseline_mib']:.0f} + {r['weights_optimized_mib']:.0f} | "
                f"{f(r.get('apply_peak_ratio'))} | {exp} | {f(r.get('export_seconds'), '{:.1f}')} | "
                f"{f(r.get('baseline_decode_tok_s'), '{:.1f}')} → {f(r.get('optimized_decode_tok_s'), '{:.1f}')} | "
                f"{f(r.get('optimized_peak_mib'), '{:.0f}')} | {est} |")
    if by["ladder"]:
        lines += ["", "## The ladder (128-token prompt, 128 new tokens, greedy)", "",
                  "| batch | rung | TTFT ms | decode ms/tok | decode tok/s | peak alloc MB | MBU |",
                  "|---|---|---|---|---|---|---|"]
        for r in sorted(by["ladder"], key=lambda r: (r["batch"], LADDER.index(f"{r['rung']}@{r['batch']}")
                                                    if f"{r['rung']}@{r['batch']}" in LADDER else 99)):
            if "error" in r:
                lines.append(f"| {r['batch']} | {r['rung']} | error: {r['error'][:120]} | | | | |")
                continue
            lines.append(f"| {r['batch']} | {r['rung']} | {r['ttft_ms']:.2f} | {r['decode_ms_per_token']:.3f} | "
                         f"{r['decode_tokens_per_s']:.1f} | {r['peak_allocated_mb'] or 0:.0f} | "
                         f"{r['mbu'] * 100:.1f} % |")
    unfinished = [r for r in rows if r.get("section") == "unfinished"]
    if unfinished:
        lines += ["", "## Started but not finished (no figures: the device call ended first)", ""]
        lines += [f"* {r['what']} (call {r['call']}, started {r['started']}, ran ≥ {r['ran_at_least_s']} s): "
                  f"{r['note']}" for r in unfinished]
    return "\n".join(lines) + "\n"


def write_results(rows: list[dict], env: dict, out_dir: Path, stem: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"environment": env, "rows": rows}
    (out_dir / f"{stem}.json").write_text(json.dumps(doc, indent=1, default=str))
    (out_dir / f"{stem}.md").write_text(markdown(rows, env))


# ---------------------------------------------------------------------------------------------------- main

def main() -> int:
    global TAG, OUT
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="model folder (build_model.py)")
    ap.add_argument("--config", default="llama-8b", help="its build_model.py config (for the ladder's byte count)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--only", default="bandwidth,load,eval,opts,ladder")
    ap.add_argument("--opts", default=None, help="';'-separated --opt texts (default: the CUDA catalogue)")
    ap.add_argument("--ladder", default=None, help="','-separated rung@batch (default: the 8B ladder)")
    ap.add_argument("--workers", type=int, default=1, help="opts over this many processes (memory rows stay exact; "
                                                            "speed figures then share the device)")
    ap.add_argument("--load-rounds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5, help="ladder timed rounds")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--bench-new-tokens", type=int, default=32, help="opts rows: new tokens per timed generate")
    ap.add_argument("--bench-seconds", type=float, default=2.0)
    ap.add_argument("--scratch", default="/tmp/optbench-8b")
    ap.add_argument("--out", default=".")
    ap.add_argument("--tag", default="main")
    ap.add_argument("--merge", nargs="*", help="row files / result JSONs to merge into --results")
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--stem", default="gpu_8b_h200")
    args = ap.parse_args()
    TAG, OUT = args.tag, Path(args.out)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.merge is not None:
        rows, env = read_rows(args.merge)
        write_results(rows, env, Path(args.results), args.stem)
        print(markdown(rows, env))
        return 0

    os.environ.setdefault("OPTBENCH_CACHE", str(Path(args.scratch) / "cache"))
    import torch

    from workbench.core.measure.env import environment

    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(","))
    cuda = args.device.startswith("cuda")
    if TAG == "main":
        env = environment(args.device)
        emit_row({"section": "environment", "key": "environment", "environment": env})
        log(f"{env.get('device_name')} · driver {env.get('driver')} · torch {env.get('torch')} · transformers "
            f"{env.get('transformers')} · torchao {env.get('torchao')}")
    bw = section_bandwidth(torch, args.device) if ("bandwidth" in only or "ladder" in only) else None
    if "load" in only:
        section_load(torch, args.model, args.device, args.load_rounds)
    if "eval" in only:
        section_eval(torch, args.model, args.device)
    if "opts" in only:
        opts = args.opts.split(";") if args.opts else (OPTS if cuda else CPU_OPTS)
        bench_kw = {"batch": 1, "seq_len": 128, "new_tokens": args.bench_new_tokens, "warmup": 1, "min_iters": 3,
                    "min_seconds": args.bench_seconds}
        if args.workers > 1:
            shares = [opts[i::args.workers] for i in range(args.workers)]
            procs = []
            for i, share in enumerate(shares):
                cmd = [sys.executable, __file__, "--model", args.model, "--config", args.config, "--device",
                       args.device, "--only", "opts", "--opts", ";".join(share), "--out", str(OUT), "--tag",
                       f"w{i + 1}", "--scratch", args.scratch, "--bench-new-tokens", str(args.bench_new_tokens),
                       "--bench-seconds", str(args.bench_seconds)]
                procs.append(subprocess.Popen(cmd))
            for p in procs:
                p.wait()
        else:
            for o in opts:
                log(f"opt {o}")
                section_opt(torch, args.model, args.device, o, scratch, bench_kw)
    if "ladder" in only:
        rungs = args.ladder.split(",") if args.ladder else (LADDER if cuda else CPU_LADDER)
        for rung_at in rungs:
            log(f"ladder {rung_at}")
            section_ladder(torch, args.model, args.config, args.device, rung_at, bw, args.prompt, args.new,
                           args.rounds)
    if TAG == "main":
        rows, env = read_rows(sorted(str(p) for p in OUT.glob("rows-*.jsonl")))
        write_results(rows, env, OUT, "gpu_8b")
        print(markdown(rows, env))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
