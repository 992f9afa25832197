"""Decode-step matmul kernels on one GPU, side by side: the Linear layers of a decoder (a Llama-3.1-8B or
Llama-3.2-1B shape: fused qkv, o, fused gate/up, down per layer, plus the head) run once per step at batch M, as
one CUDA graph, for each weight format: bf16, torchao's tinygemm int4 and int8 weight-only, GemLite's Triton
int4 (HQQ format, codes from workbench's own round-to-nearest grid) and int8 kernels, and the mslk package's
int4 kernels through torchao (``mslk-*``: plain and preshuffled int4, and fp8-activation W4A8).

This is the evidence for which kernel an optimization should use: it isolates the matmuls (no attention, no
norms), so it says what a format can at best give a decode step. Weights are random (speed only).

usage: python benchmarks/kernel_probe.py --shape 8b --batches 1,8 --out DIR [--variants bf16,tinygemm-int4,...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

SHAPES = {  # hidden, intermediate, layers, q heads, kv heads, head dim, vocab
    "8b": (4096, 14336, 32, 32, 8, 128, 128256),
    "1b": (2048, 8192, 16, 32, 8, 64, 128256),
}
VARIANTS = ("bf16", "tinygemm-int4", "torchao-int8", "gemlite-int4", "gemlite-int4-g64", "gemlite-int8",
            "mslk-int4", "mslk-int4-shuffled", "mslk-w4a8")
# torchao configs over the mslk package's int4 kernels (pip mslk-cuda; torchao's int4 "plain" and "preshuffled"
# packing formats: bf16i4bf16_rowwise / _shuffled; w4a8: fp8 rowwise activations x int4 weights, f8i4bf16_shuffled)
MSLK = {"mslk-int4": ("int4", "plain"), "mslk-int4-shuffled": ("int4", "preshuffled"),
        "mslk-w4a8": ("w4a8", "preshuffled")}


def layer_shapes(shape: str) -> list[tuple[int, int]]:
    """(out, in) of every Linear a decode step runs, in order; the head last."""
    h, i, n, qh, kvh, hd, vocab = SHAPES[shape]
    per = [((qh + 2 * kvh) * hd, h), (h, qh * hd), (2 * i, h), (h, i)]
    return per * n + [(vocab, h)]


def build(variant: str, weights, torch):
    """Callables f(x) -> y for every weight, in the format ``variant``."""
    import torch.nn.functional as F

    if variant == "bf16":
        return [lambda x, w=w: F.linear(x, w) for w in weights]
    if variant in ("tinygemm-int4", "torchao-int8") or variant in MSLK:
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

        if variant in MSLK:
            kind, packing = MSLK[variant]
            if kind == "int4":
                cfg = Int4WeightOnlyConfig(group_size=128, int4_packing_format=packing)
            else:
                from torchao.quantization import Float8DynamicActivationInt4WeightConfig

                cfg = Float8DynamicActivationInt4WeightConfig(int4_packing_format=packing)
        else:
            cfg = (Int4WeightOnlyConfig(group_size=128, int4_packing_format="tile_packed_to_4d")
                   if variant == "tinygemm-int4" else Int8WeightOnlyConfig())
        mods = []
        for w in weights:
            lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device=w.device, dtype=w.dtype)
            lin.weight.data.copy_(w)
            quantize_(lin, cfg)
            mods.append(lin)
        return mods
    from gemlite.helper import A16W4_HQQ_INT, A16W8_INT8

    if variant == "gemlite-int8":
        mods = []
        for w in weights:
            lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device=w.device, dtype=w.dtype)
            lin.weight.data.copy_(w)
            mods.append(A16W8_INT8(device=w.device, dtype=torch.bfloat16).from_linear(lin))
        return mods
    from workbench.core.optimizations import quant_calibrate as qc

    grid = qc.Grid("asym", 64 if variant.endswith("g64") else 128)
    mods = []
    for w in weights:
        q = qc.rtn(w, grid)  # W ~ (codes - 8) * s + z  ==  (codes - (8 - z / s)) * s
        zeros = 8.0 - q.zero / q.scale
        mods.append(A16W4_HQQ_INT(device=w.device, dtype=torch.bfloat16).from_weights(
            q.codes.to(torch.uint8), q.scale.to(torch.bfloat16), zeros.to(torch.bfloat16)))
        del q, zeros
    return mods


def measure(fns, inputs, torch, reps: int) -> dict:
    """One step = every fn once on its input; eager and CUDA-graph medians (ms) over ``reps`` steps."""
    def step():
        for f, x in zip(fns, inputs):
            f(x)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for a, b in ev:
        a.record(); step(); b.record()
    torch.cuda.synchronize()
    out = {"eager_ms": statistics.median(a.elapsed_time(b) for a, b in ev)}
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            step()
        g.replay()
        torch.cuda.synchronize()
        for a, b in ev:
            a.record(); g.replay(); b.record()
        torch.cuda.synchronize()
        out["graph_ms"] = statistics.median(a.elapsed_time(b) for a, b in ev)
        del g
    except Exception as e:  # a kernel that cannot be captured: say so, keep the eager figure
        out["graph_error"] = f"{type(e).__name__}: {e}"[:300]
    return out


def write(a, env, wbytes, copy_bw, rows) -> str:
    """The JSON and Markdown files for the rows so far (called after every row: a cut-off run keeps them)."""
    base = {r["batch"]: r.get("graph_ms", r.get("eager_ms")) for r in rows if r["variant"] == "bf16" and "error" not in r}
    for r in rows:
        t = r.get("graph_ms", r.get("eager_ms"))
        if t and r.get("batch") in base:
            r["speedup_vs_bf16"] = round(base[r["batch"]] / t, 3)
    stem = a.stem or f"kernel_probe_{a.shape}"
    a.out.mkdir(parents=True, exist_ok=True)
    doc = {"shape": a.shape, "bf16_weight_bytes": wbytes, "copy_bandwidth_tb_s": round(copy_bw / 1e12, 3),
           "env": env, "rows": rows}
    (a.out / f"{stem}.json").write_text(json.dumps(doc, indent=1))
    lines = [f"# Decode-step matmuls, {a.shape} shape, {env['gpu']} (torch {env['torch']}, torchao {env['torchao']}, "
             f"gemlite {env['gemlite']}, triton {env['triton']}, mslk-cuda {env.get('mslk-cuda')})", "",
             f"bf16 weights {wbytes / 1e9:.2f} GB; copy bandwidth {copy_bw / 1e12:.2f} TB/s in the same run. One "
             f"step = every Linear once (no attention or norms), median of {a.reps} steps as one CUDA graph.", "",
             "| variant | batch | graph ms | eager ms | x bf16 | bf16-equiv TB/s | layer-0 rel err |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r and "eager_ms" not in r:
            lines.append(f"| {r['variant']} | {r.get('batch', '')} | error: {r['error'][:120]} | | | | |")
            continue
        g = f"{r['graph_ms']:.3f}" if "graph_ms" in r else "n/a"
        rel = f"{r['rel_err_layer0']:.4f}" if r.get("rel_err_layer0") is not None else ""
        lines.append(f"| {r['variant']} | {r['batch']} | {g} | {r['eager_ms']:.3f} | {r.get('speedup_vs_bf16', '')} | "
                     f"{r.get('weight_tb_s', '')} | {rel} |")
    (a.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--stem", default=None)
    a = ap.parse_args(argv)
    import torch

    torch.manual_seed(0)
    dev = torch.device("cuda")
    shapes = layer_shapes(a.shape)
    weights = [torch.randn(o, i, device=dev, dtype=torch.bfloat16) * 0.02 for o, i in shapes]
    wbytes = sum(w.numel() for w in weights) * 2
    batches = [int(b) for b in a.batches.split(",")]
    from importlib.metadata import version

    env = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    for pkg in ("torchao", "gemlite", "triton", "mslk-cuda"):
        try:
            env[pkg] = version(pkg)
        except Exception:
            env[pkg] = None
    # the copy bandwidth of this GPU now (the roofline the MBU is against)
    buf = torch.empty(2 * 1024 ** 3, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(buf)
    for _ in range(3):
        dst.copy_(buf)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        dst.copy_(buf)
    torch.cuda.synchronize()
    copy_bw = 2 * buf.numel() * 10 / (time.perf_counter() - t0)
    del buf, dst
    rows = []
    ref_out = {}
    for variant in a.variants.split(","):
        t0 = time.perf_counter()
        try:
            fns = build(variant, weights, torch)
        except Exception as e:
            rows.append({"variant": variant, "error": f"build: {type(e).__name__}: {e}"[:300]})
            print(rows[-1], flush=True)
            continue
        build_s = time.perf_counter() - t0
        qbytes = torch.cuda.memory_allocated()
        for m in batches:
            gen = torch.Generator(device=dev).manual_seed(m)  # the same inputs for every variant
            inputs = [torch.randn(1, m, i, device=dev, dtype=torch.bfloat16, generator=gen) for _, i in shapes]
            try:
                with torch.no_grad():
                    y = fns[0](inputs[0]).float()
                    if variant == "bf16":
                        ref_out[m] = y
                    rel = (float((y - ref_out[m]).norm() / ref_out[m].norm()) if m in ref_out else None)
                    r = measure(fns, inputs, torch, a.reps)
            except Exception as e:
                r, rel = {"error": f"{type(e).__name__}: {e}"[:300]}, None
            best = r.get("graph_ms", r.get("eager_ms"))
            row = {"variant": variant, "batch": m, "build_s": round(build_s, 1), "rel_err_layer0": rel, **r}
            if best:
                row["weight_tb_s"] = round(wbytes / best / 1e9, 3)  # bf16-equivalent bytes per ms -> TB/s
            rows.append(row)
            print(json.dumps(row), flush=True)
            write(a, env, wbytes, copy_bw, rows)
            del inputs
        del fns
        torch.cuda.empty_cache()
        print(f"{variant}: memory allocated with it {qbytes / 1e9:.2f} GB", flush=True)
    print(write(a, env, wbytes, copy_bw, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
