"""The speed ladder: HF defaults → sdpa → static cache → graph-decode → int8 / int4 / float8 weight-only.

For each model config (random-init weights: speed does not depend on their values) and batch size, with a
128-token prompt and 128 new tokens (greedy, min_new_tokens == max_new_tokens), every rung reports
time-to-first-token, decode tokens/s, peak CUDA memory and MBU: the share of the HBM roofline, using the copy
bandwidth measured on this card in the same run. Accuracy of every rung (perplexity, next-token agreement, KL vs
the bf16 baseline) is measured on real weights (demo:smollm2) when that model is available.

Usage (GPU): python benchmarks/gpu_ladder.py [--models smollm2-135m,llama-1b] [--batches 1,8] [--out DIR]
Writes gpu_ladder.json and gpu_ladder.md to --out (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CONFIGS = {
    # HuggingFaceTB/SmolLM2-135M's architecture
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                         rope_theta=100000.0, max_position_embeddings=8192),
    # meta-llama/Llama-3.2-1B's architecture (1.24 B parameters)
    "llama-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True,
                     rope_theta=500000.0, max_position_embeddings=8192, head_dim=64),
}

class FixedTok:
    """bench_causal needs a pad id and fixed prompt ids; word -> deterministic id is enough for speed."""

    pad_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        import zlib

        return {"input_ids": [zlib.crc32(w.encode()) % 30000 + 100 for w in text.split()]}


RUNGS = ["hf-eager", "hf-sdpa", "static-cache", "graph-decode", "int8-wo", "int4-wo", "float8-wo", "float8-dyn"]
QUANT_RUNGS = ("int8-wo", "int4-wo", "float8-wo", "float8-dyn", "int4-gl", "int4-hqq", "int8-gl")
# Compile variants of graph-decode; any rung may take one as a suffix, e.g. "int8-wo+cdt".
VARIANTS = {"": {}, "cdt": {"tuning": "coordinate-descent"},
            "gemv": {"tuning": "coordinate-descent", "gemv": True},
            "autotune": {"compile_mode": "max-autotune-no-cudagraphs"},
            "fuse": {"fuse": True},
            "fused": {"tuning": "coordinate-descent", "fuse": True},
            "fgemv": {"tuning": "coordinate-descent", "fuse": True, "gemv": True},
            # every Linear a cuBLAS call inductor cannot rewrite, the rest tuned (graph-decode:matmul=extern)
            "cdtx": {"tuning": "coordinate-descent", "matmul": "extern"},
            "fusedx": {"tuning": "coordinate-descent", "fuse": True, "matmul": "extern"},
            # inductor's fusion switches (graph-decode:fusion=...) on the best recipes
            "fusedc": {"tuning": "coordinate-descent", "fuse": True, "fusion": "combo"},
            "fuseda": {"tuning": "coordinate-descent", "fuse": True, "fusion": "aggressive"},
            "fusedca": {"tuning": "coordinate-descent", "fuse": True, "fusion": "combo+aggressive"},
            "cdtc": {"tuning": "coordinate-descent", "fusion": "combo"},
            "cdtca": {"tuning": "coordinate-descent", "fusion": "combo+aggressive"},
            # programmatic dependent launch (graph-decode:pdl=true)
            "fusedp": {"tuning": "coordinate-descent", "fuse": True, "pdl": True},
            "fusedcp": {"tuning": "coordinate-descent", "fuse": True, "fusion": "combo", "pdl": True},
            "cdtp": {"tuning": "coordinate-descent", "pdl": True},
            "cdtcp": {"tuning": "coordinate-descent", "fusion": "combo", "pdl": True},
            # optbench's Triton decode-attention kernel (graph-decode:decode_kernel=triton, needs fuse)
            "fusedk": {"tuning": "coordinate-descent", "fuse": True, "decode_kernel": "triton"},
            "fusedkp": {"tuning": "coordinate-descent", "fuse": True, "decode_kernel": "triton", "pdl": True},
            "fusedkcp": {"tuning": "coordinate-descent", "fuse": True, "decode_kernel": "triton", "fusion": "combo",
                         "pdl": True}}
ALIASES = {"graph-cdt": "graph-decode+cdt", "graph-gemv": "graph-decode+gemv",
           "graph-autotune": "graph-decode+autotune", "graph-fused": "graph-decode+fused"}
DEVICE = "cuda"  # the CPU dry run switches it


def copy_bandwidth(torch, gib: float = 1.0, reps: int = 20) -> float:
    """Device-to-device copy: bytes read + bytes written per second (median of reps)."""
    n = int(gib * 2**30) // 2
    src = torch.randn(n, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1000)
    del src, dst
    return 2 * n * 2 / statistics.median(times)


def shape(name: str) -> dict:
    """The LlamaConfig keywords of a ladder model: this file's CONFIGS, else build_model.py's real-size shapes."""
    if name in CONFIGS:
        return CONFIGS[name]
    from build_model import CONFIGS as SIZES  # the real-size shapes (llama-8b, ...)

    if name not in SIZES:
        raise SystemExit(f"--models {name}: expected one of {', '.join(sorted({*CONFIGS, *SIZES}))}")
    family, kw = SIZES[name]
    if family != "llama":
        raise SystemExit(f"--models {name}: only Llama-family shapes build here (got {family})")
    return kw


def build(torch, name: str, attn: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**shape(name), attn_implementation=attn)
    with torch.device(DEVICE):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    return model


# ladder rung -> the catalogue optimization (and parameters) it applies
RUNG_OPTS = {"int8-wo": ("int8-weight-only", {}), "int4-wo": ("int4-weight-only", {"group_size": 128}),
             "float8-wo": ("fp8-weight-only", {}), "float8-dyn": ("fp8-dynamic", {}),
             # the same int4 / int8 codes through GemLite's Triton kernels (q/k/v and gate/up packed), and HQQ
             # through tinygemm for an equal-accuracy comparison
             "int4-gl": ("int4-weight-only", {"group_size": 128, "kernel": "gemlite"}),
             "int8-gl": ("int8-weight-only", {"kernel": "gemlite"}),
             "int4-hqq": ("int4-weight-only", {"group_size": 128, "algorithm": "hqq"})}


def quantize(model, rung: str) -> dict:
    """Apply the rung through optbench's own registry (weight quantization of every Linear but lm_head)."""
    from workbench.core import optimizations
    from workbench.core.optimizations.context import ApplyContext

    name, params = RUNG_OPTS[rung]
    spec = optimizations.get(name)
    return spec.apply(model, spec.resolve(params), ApplyContext(device=DEVICE, task="causal-lm")).report


def bytes_per_token(model, cfg: dict, batch: int, prompt: int, new: int) -> float:
    """Weights read per decode step (tied embedding = lm_head, read in full) + the KV cache read, mid-generation."""
    from workbench.core.measure.memory import model_size_bytes

    weights = model_size_bytes(model)
    if not cfg["tie_word_embeddings"]:
        weights -= cfg["vocab_size"] * cfg["hidden_size"] * 2  # the input table: one row read per token
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    avg_pos = prompt + new / 2
    kv = 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * head_dim * avg_pos * 2 * batch
    return weights + kv


def time_rung(torch, model, rung: str, batch: int, prompt: int, new: int, rounds: int, gen=None) -> dict:
    from workbench.core.measure.timing import bench_causal
    from workbench.core.recipe import BenchSettings

    settings = BenchSettings(batch=batch, seq_len=prompt, new_tokens=new, warmup=3, min_iters=rounds,
                             min_seconds=2.0)
    kwargs = {}
    if rung == "static-cache":
        kwargs = {"cache_implementation": "static"}
    elif rung not in ("hf-eager", "hf-sdpa"):
        kwargs = {"optbench_generator": lambda b, L: gen}
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    r = bench_causal(model, FixedTok(), settings, DEVICE, generate_kwargs=kwargs)
    r["peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20 if DEVICE == "cuda" else None
    return r


def truth_check(torch, model, batch: int, prompt: int, new: int, gen=None, rounds: int = 10) -> dict:
    """optbench's per-token decode (stamped at every step) vs an independent figure from whole-call timing
    with CUDA events: (T(new) - T(2)) / (new - 2). Interleaved round by round — a long call, a short call and one
    stamped optbench run — so a drifting host (the HF path is host-bound) moves both figures alike; medians."""
    from workbench.core.measure.timing import bench_causal, fixed_input_ids
    from workbench.core.recipe import BenchSettings

    ids = fixed_input_ids(FixedTok(), batch, prompt).to(DEVICE)
    mask = torch.ones_like(ids)
    kwargs = {"optbench_generator": lambda b, L: gen} if gen is not None else {}

    def whole(n):
        with torch.inference_mode():
            if DEVICE == "cuda":
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                a.record()
            t0 = time.perf_counter()
            if gen is not None:
                gen.generate(ids, n)
            else:
                model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, pad_token_id=0)
            if DEVICE != "cuda":
                return (time.perf_counter() - t0) * 1000
            b.record()
            torch.cuda.synchronize()
            return a.elapsed_time(b)

    for _ in range(3):
        whole(new), whole(2)
    longs, shorts, ours = [], [], []
    one = BenchSettings(batch=batch, seq_len=prompt, new_tokens=new, warmup=1, min_iters=1, min_seconds=0.0)
    for _ in range(rounds):
        longs.append(whole(new))
        shorts.append(whole(2))
        ours += bench_causal(model, FixedTok(), one, DEVICE, generate_kwargs=kwargs)["decode_ms_per_token"]["samples"]
    independent = (statistics.median(longs) - statistics.median(shorts)) / (new - 2)
    mine = statistics.median(ours)
    return {"optbench_decode_ms": mine, "independent_decode_ms": independent,
            "difference_percent": (mine - independent) / independent * 100, "optbench_samples_ms": ours,
            "long_call_ms": longs, "short_call_ms": shorts}


def monitor_cost(torch, model, batch: int, prompt: int, new: int, gen) -> dict:
    """Decode throughput with the monitor off and on (4 Hz, NVML included), alternating, same process."""
    from workbench.core.measure.monitor import Monitor

    offs, ons = [], []
    for i in range(6):
        on = i % 2 == 1
        mon = Monitor(hz=4.0, on_sample=lambda s: json.dumps(s)).start() if on else None
        r = time_rung(torch, model, "graph-decode", batch, prompt, new, rounds=5, gen=gen)
        if mon:
            mon.stop()
        (ons if on else offs).append(r["throughput"]["value"])
    off, on_ = statistics.median(offs), statistics.median(ons)
    return {"off_tokens_per_s": off, "on_tokens_per_s": on_, "overhead_percent": (1 - on_ / off) * 100,
            "off_samples": offs, "on_samples": ons}


def accuracy_rungs(torch, smol_ref: str, rungs: list[str]) -> dict:
    """Real weights: perplexity / agreement / KL of each weight format vs bf16, on the built-in text."""
    from workbench.core.data import load_eval
    from workbench.core.evaluate import eval_causal
    from workbench.core.models import auto_class, load
    from workbench.core.recipe import EvalSettings

    settings = EvalSettings(token_budget=4096, window=512)
    loaded = load(smol_ref, device=DEVICE)
    model = loaded.model.to(torch.bfloat16)
    data = load_eval(settings, "causal-lm")
    base, ref = eval_causal(model, loaded.tokenizer, data, settings, DEVICE, None)
    out = {"bf16": base}
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    config = model.config
    del model, loaded.model
    formats = dict.fromkeys(ALIASES.get(r, r).partition("+")[0] for r in rungs)  # int8-wo+fused -> int8-wo
    for rung in formats:
        if rung not in QUANT_RUNGS:
            continue
        try:
            m = auto_class("causal-lm").from_config(config, dtype=torch.bfloat16).to(DEVICE).eval()
            m.load_state_dict(state)
            m.tie_weights()
            quantize(m, rung)
            metrics, _ = eval_causal(m, loaded.tokenizer, data, settings, DEVICE, ref)
            out[rung] = metrics
            del m
        except Exception as exc:  # one broken format must not hide the others
            out[rung] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            traceback.print_exc()
    return out


def main() -> int:
    global DEVICE
    import torch

    from workbench.core.optimizations.fastgen import GraphedGreedy
    from workbench.core.measure.env import environment

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="smollm2-135m,llama-1b")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--rungs", default=",".join(RUNGS))
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--accuracy-model", default="demo:smollm2", help="'' to skip")
    ap.add_argument("--skip-extras", action="store_true", help="no truth check / monitor cost")
    ap.add_argument("--truth-rung", default="graph-decode+fused",
                    help="the batch-1 rung that gets the truth check and the monitor cost (besides hf-sdpa's truth)")
    ap.add_argument("--cpu-dry-run", action="store_true", help="check the script's logic on CPU with a tiny config")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.cpu_dry_run:
        DEVICE = "cpu"
        CONFIGS["tiny"] = dict(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                               max_position_embeddings=512)
    bw = copy_bandwidth(torch) if DEVICE == "cuda" else 1e10
    env = environment(DEVICE)
    print(f"# {env.get('device_name')} · driver {env.get('driver')} · torch {env.get('torch')} · transformers "
          f"{env.get('transformers')} · torchao {env.get('torchao')} · copy bandwidth {bw / 1e12:.2f} TB/s",
          flush=True)
    rows: list[dict] = []
    doc = {"environment": env, "copy_bandwidth_Bps": bw, "prompt": args.prompt, "new_tokens": args.new,
           "rows": rows, "dry_run": args.cpu_dry_run}
    mode = "graph" if DEVICE == "cuda" else "eager"
    for name in [m for m in args.models.split(",") if m]:
        for batch in [int(b) for b in args.batches.split(",")]:
            for rung in args.rungs.split(","):
                row: dict = {"model": name, "batch": batch, "rung": rung}
                base, _, variant = ALIASES.get(rung, rung).partition("+")
                t0 = time.time()
                model = gen = None
                try:
                    model = build(torch, name, "eager" if base == "hf-eager" else "sdpa")
                    if base in QUANT_RUNGS:
                        quantize(model, base)
                    if base not in ("hf-eager", "hf-sdpa", "static-cache"):
                        gen = GraphedGreedy(model, batch, args.prompt + args.new, mode=mode,
                                            **(VARIANTS[variant] if mode == "graph"
                                               else {"fuse": VARIANTS[variant].get("fuse", False)}))
                    r = time_rung(torch, model, base, batch, args.prompt, args.new, args.rounds, gen=gen)
                    # the measured figures first, so that a failure in what is derived from them loses nothing
                    row.update({
                        "ttft_ms": r["ttft_ms"]["p50"], "decode_ms_per_token": r["decode_ms_per_token"]["p50"],
                        "decode_tokens_per_s": r["throughput"]["value"], "peak_allocated_mb": r["peak_allocated_mb"],
                        "cold_start_ms": r["cold_start_ms"], "timed_runs": r["latency_ms"]["count"],
                        "decode_ms_samples": r["decode_ms_per_token"]["samples"],
                    })
                    t_tok = r["decode_ms_per_token"]["p50"] / 1000
                    need = bytes_per_token(model, shape(name), batch, args.prompt, args.new)
                    row.update({"bytes_per_token": need, "achieved_GBps": need / t_tok / 1e9, "mbu": need / t_tok / bw})
                    if not args.skip_extras and batch == 1 and rung in ("hf-sdpa", args.truth_rung):
                        row["truth_check"] = truth_check(torch, model, batch, args.prompt, args.new, gen=gen)
                    if not args.skip_extras and batch == 1 and rung == args.truth_rung:
                        row["monitor_cost"] = monitor_cost(torch, model, batch, args.prompt, args.new, gen)
                except Exception as exc:
                    row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                    traceback.print_exc()
                row["seconds"] = time.time() - t0
                rows.append(row)
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                                  if not isinstance(v, (dict, list))}), flush=True)
                del model, gen
                gc.collect()
                if DEVICE == "cuda":
                    torch.cuda.empty_cache()
                (out_dir / "gpu_ladder.json").write_text(json.dumps(doc, indent=1, default=str))
    if args.accuracy_model:
        try:
            doc["accuracy"] = accuracy_rungs(torch, args.accuracy_model, args.rungs.split(","))
        except Exception as exc:
            doc["accuracy"] = {"error": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc()
    (out_dir / "gpu_ladder.json").write_text(json.dumps(doc, indent=1, default=str))
    (out_dir / "gpu_ladder.md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


def markdown(doc: dict) -> str:
    env = doc["environment"]
    lines = [f"# Speed ladder — {env.get('device_name')}",
             "",
             f"driver {env.get('driver')} · torch {env.get('torch')} · transformers {env.get('transformers')} · "
             f"torchao {env.get('torchao')} · measured copy bandwidth {doc['copy_bandwidth_Bps'] / 1e12:.2f} TB/s "
             f"(read + write) · prompt {doc['prompt']} · new tokens {doc['new_tokens']} · greedy · bf16 "
             f"activations · random-init weights (speed only)",
             "",
             "| model | batch | rung | TTFT ms | decode ms/tok | decode tok/s | peak alloc MB | MBU |",
             "|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        if "error" in r or "mbu" not in r:
            lines.append(f"| {r['model']} | {r['batch']} | {r['rung']} | error: {r.get('error', '')[:80]} | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['batch']} | {r['rung']} | {r['ttft_ms']:.2f} | "
                     f"{r['decode_ms_per_token']:.3f} | {r['decode_tokens_per_s']:.0f} | "
                     f"{r['peak_allocated_mb'] or 0:.0f} | {r['mbu'] * 100:.1f} % |")
    acc = doc.get("accuracy")
    if isinstance(acc, dict) and "bf16" in acc:
        lines += ["", "Accuracy on real weights (demo:smollm2, 4096 tokens of the built-in text):", "",
                  "| format | perplexity | next-token agreement | KL vs bf16 |", "|---|---|---|---|"]
        for k, m in acc.items():
            if "error" in m:
                lines.append(f"| {k} | error: {m['error'][:80]} | | |")
            else:
                lines.append(f"| {k} | {m['perplexity']:.3f} | {m['next_token_agreement']:.4f} | "
                             f"{m['kl_divergence']:.5f} |")
    for r in doc["rows"]:
        if r.get("truth_check"):
            t = r["truth_check"]
            lines.append(f"\nTruth check ({r['model']}, batch {r['batch']}, {r['rung']}): optbench decode "
                         f"{t['optbench_decode_ms']:.3f} ms/token vs independent whole-call CUDA events "
                         f"{t['independent_decode_ms']:.3f} ms/token ({t['difference_percent']:+.2f} %)")
        if r.get("monitor_cost"):
            m = r["monitor_cost"]
            lines.append(f"\nMonitor cost ({r['model']}, batch {r['batch']}, {r['rung']}): "
                         f"{m['off_tokens_per_s']:.0f} tok/s off vs {m['on_tokens_per_s']:.0f} on at 4 Hz "
                         f"({m['overhead_percent']:+.2f} %)")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
