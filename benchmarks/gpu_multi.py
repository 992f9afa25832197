"""Beyond one GPU: (1) a model placed across every visible GPU with accelerate's device_map, measured by optbench's
own engine next to the same model on one GPU; (2) distillation with DDP through torchrun on 1 and 2 GPUs at the same
global batch — loss curves compared step by step, samples/s compared side by side.

    python benchmarks/gpu_multi.py [--out benchmarks/results/gpu_multi.json] [--steps 40]

Model: Llama-3.2-1B's architecture with random-init weights (speed and equality checks only; vocabulary cut to the
test tokenizer's 30522 ids), saved with save_pretrained so both parts load it like a user's folder.
What a user runs is the same: ``optbench run --model DIR --device cuda --device-map balanced`` and
``torchrun --nproc_per_node 2 -m workbench.core.distill_run --model DIR --out student/ --param ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build(out: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (out / "config.json").is_file():
        return out
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=30522, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True,
                      rope_theta=500000.0, max_position_embeddings=4096, pad_token_id=0, bos_token_id=101,
                      eos_token_id=102)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(ROOT / "tests/fixtures/tokenizer").save_pretrained(out)
    return out


def placement(model_dir: Path) -> dict:
    from workbench.core import pipeline
    from workbench.core.recipe import BenchSettings, EvalSettings, ModelSpec, OptStep, Recipe

    out = {}
    for label, dm in (("one GPU", None), ("device_map=balanced", "balanced")):
        events = []
        r = Recipe(ModelSpec(str(model_dir), device_map=dm), [OptStep("attention", {"impl": "sdpa"})],
                   BenchSettings(batch=1, seq_len=128, new_tokens=64, warmup=2, min_iters=5, min_seconds=3.0),
                   EvalSettings(token_budget=1024, window=256), device="cuda")
        rep = pipeline.run(r.validate(), lambda t, **k: events.append((t, k)))
        samples = [k for t, k in events if t == "sample"]
        last = samples[-1] if samples else {}
        out[label] = {
            "placement": rep["model"].get("placement"),
            "decode_ms_per_token_p50": rep["optimized"]["decode_ms_per_token"]["p50"],
            "ttft_ms_p50": rep["optimized"]["ttft_ms"]["p50"],
            "cuda_peak_allocated_mb": rep["optimized"]["memory_mb"]["cuda_peak_allocated"],
            "cuda_peak_allocated_per_device_mb": rep["optimized"]["memory_mb"].get("cuda_peak_allocated_per_device"),
            "monitor_gpus": [{"index": g["index"], "name": g["name"], "mem_used_mb": g["mem_used_mb"],
                              "util": g.get("util")} for g in last.get("gpus", [])],
            "monitor_samples": rep["monitor_samples"],
        }
        print(label, json.dumps(out[label], default=str)[:600], flush=True)
    return out


def distill(model_dir: Path, nproc: int, accum: int, steps: int, batch: int, tmp: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(nproc))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "workbench.core.distill_run", "--model", str(model_dir), "--out", str(tmp / f"student{nproc}"),
           "--param", f"steps={steps}", "--param", f"batch={batch}", "--param", "seq_len=256",
           "--param", f"grad_accum={accum}", "--param", "precision=bf16", "--param", "checkpoint=none",
           "--param", "keep=8", "--param", "lr=3e-4", "--param", "log_every=1000"]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        return {"error": proc.stderr[-1500:]}
    rep = json.loads(proc.stdout.strip().splitlines()[-1])["report"]
    keep = ("world_size", "steps_done", "train_seconds", "samples_per_s", "loss_first", "loss_last", "loss_curve",
            "heldout_loss_before", "heldout_loss_after", "tokens_seen")
    return {**{k: rep.get(k) for k in keep}, "nproc": nproc, "grad_accum": accum, "batch_per_gpu": batch,
            "global_batch": batch * accum * nproc, "wall_s": time.time() - t0}


def main() -> int:
    import torch

    from workbench.core.measure.env import environment

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/gpu_multi.json"))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dir", default="/tmp/llama1b-30k")
    ap.add_argument("--skip-placement", action="store_true")
    a = ap.parse_args()
    n = torch.cuda.device_count()
    doc = {"environment": environment("cuda"), "gpus": [torch.cuda.get_device_name(i) for i in range(n)]}
    print(doc["gpus"], flush=True)
    model_dir = build(Path(a.dir))
    tmp = Path("/tmp/optbench-multi")
    tmp.mkdir(exist_ok=True)
    if not a.skip_placement and n >= 2:
        doc["device_map"] = placement(model_dir)
    single = distill(model_dir, 1, 2, a.steps, a.batch, tmp)
    print("1 GPU", json.dumps({k: v for k, v in single.items() if k != "loss_curve"}), flush=True)
    doc["distill_1gpu"] = single
    again = distill(model_dir, 1, 2, a.steps, a.batch, tmp)  # the noise floor: the same run twice
    doc["distill_1gpu_repeat"] = again
    if n >= 2:
        ddp = distill(model_dir, 2, 1, a.steps, a.batch, tmp)
        print("2 GPUs", json.dumps({k: v for k, v in ddp.items() if k != "loss_curve"}), flush=True)
        doc["distill_2gpu"] = ddp
        if "error" not in single and "error" not in ddp:
            a1, a2 = single["loss_curve"], ddp["loss_curve"]
            diffs = [abs(x - y) for x, y in zip(a1, a2)]
            noise = [abs(x - y) for x, y in zip(a1, again.get("loss_curve") or [])] or [float("nan")]
            doc["comparison"] = {
                "samples_per_s_ratio": ddp["samples_per_s"] / single["samples_per_s"],
                "loss_max_abs_diff": max(diffs), "loss_mean_abs_diff": sum(diffs) / len(diffs),
                "noise_max_abs_diff_1gpu_twice": max(noise), "noise_mean_abs_diff_1gpu_twice": sum(noise) / len(noise),
                "loss_first_1gpu": a1[0], "loss_last_1gpu": a1[-1], "loss_last_2gpu": a2[-1],
                "heldout_after_1gpu": single["heldout_loss_after"], "heldout_after_2gpu": ddp["heldout_loss_after"],
            }
            print("comparison", json.dumps(doc["comparison"]), flush=True)
    Path(a.out).write_text(json.dumps(doc, indent=1, default=str))
    print("wrote", a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
