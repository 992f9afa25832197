"""Where does a decode step's time go? Profiles graph-decode steps: wall time per step vs the sum of GPU kernel
time, kernels per step, and the top kernels. Kernel sum ≈ wall → the kernels bound it; wall ≫ kernel sum → launch
or host overhead (e.g. CUDA graphs not applied). Writes gpu_diag.json to --out.

Usage (GPU): python benchmarks/gpu_diag.py [--model llama-1b] [--variants bf16,int8-wo] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


# kernel name fragment -> class, first match wins (names as the CUDA profiler spells them)
KERNEL_CLASSES = (("attention", ("flash", "fmha", "attn", "sdpa", "efficient_attention")),
                  ("int4 / quantized matmul", ("tinygemm", "_weight_int4", "int4", "gemlite", "int8", "fp8", "f8")),
                  ("bf16 matmul", ("gemm", "gemv", "cutlass", "sm90_xmma", "nvjet", "splitk", "mm_")),
                  ("copy / cache write", ("copy", "memcpy", "index_put", "scatter", "cat")),
                  ("fused elementwise (Triton)", ("triton_",)),
                  ("reduction / sampling", ("reduce", "argmax", "softmax")))


def kernel_class(name: str) -> str:
    low = name.lower()
    for label, fragments in KERNEL_CLASSES:
        if any(f in low for f in fragments):
            return label
    return "other"


def profile_steps(torch, gen, ids, steps: int = 64) -> dict:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        gen.generate(ids, steps)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(5):
        gen.generate(ids, steps)
    torch.cuda.synchronize()
    wall_call = (time.perf_counter() - t0) / 5
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        gen.generate(ids, steps)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
    total_us = sum(e.time_range.elapsed_us() for e in kernels)
    by_name: dict[str, list] = {}
    for e in kernels:
        by_name.setdefault(e.name[:90], []).append(e.time_range.elapsed_us())
    top = sorted(((sum(v), len(v), k) for k, v in by_name.items()), reverse=True)[:12]
    classes: dict[str, list] = {}
    for name, times in by_name.items():
        slot = classes.setdefault(kernel_class(name), [0.0, 0])
        slot[0] += sum(times)
        slot[1] += len(times)
    return {
        "wall_ms_per_call": wall_call * 1000,
        "wall_ms_per_step_incl_prefill": wall_call * 1000 / steps,
        "gpu_kernel_ms_per_step": total_us / 1000 / steps,
        "kernels_per_step": len(kernels) / steps,
        "top_kernels": [{"name": n, "total_ms": t / 1000, "count": c} for t, c, n in top],
        # time per step and kernels per step by kind (issue 14: "time per kernel class")
        "classes": {k: {"ms_per_step": t / 1000 / steps, "kernels_per_step": c / steps}
                    for k, (t, c) in sorted(classes.items(), key=lambda kv: -kv[1][0])},
    }


def main() -> int:
    import torch

    from gpu_ladder import CONFIGS, VARIANTS, build, quantize
    from workbench.core.optimizations.fastgen import GraphedGreedy

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-1b")
    ap.add_argument("--variants", default="bf16,int8-wo")
    ap.add_argument("--modes", default="graph,reduce-overhead")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    out = {}
    ids = torch.randint(100, 30000, (1, 128), device="cuda")
    for variant in args.variants.split(","):
        for mode in args.modes.split(","):
            base, _, suffix = variant.partition("+")  # e.g. bf16+cdt, int4-wo+cdt (see gpu_ladder.VARIANTS)
            model = build(torch, args.model, "sdpa")
            if base != "bf16":
                quantize(model, base)
            t0 = time.time()
            gen = GraphedGreedy(model, 1, 256, mode=mode, log=print, **(VARIANTS[suffix] if mode == "graph" else {}))
            gen.generate(ids, 4)
            compile_s = time.time() - t0
            try:
                r = profile_steps(torch, gen, ids)
            except Exception as exc:
                r = {"error": f"{type(exc).__name__}: {exc}"}
            r["compile_s"] = compile_s
            out[f"{variant}/{mode}"] = r
            print(variant, mode, json.dumps({k: v for k, v in r.items() if k != "top_kernels"}), flush=True)
            for k in r.get("top_kernels", [])[:6]:
                print("   ", f"{k['total_ms']:.2f} ms x{k['count']}", k["name"], flush=True)
            del model, gen
            torch.cuda.empty_cache()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_diag.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
