"""Accuracy of the quantization methods on real weights: perplexity, KL(baseline || quantized) and next-token
agreement on the built-in evaluation text, every method applied to a fresh copy of the same model in one run.

Each row goes through the optimization's own apply function (the code ``optbench run --opt X`` runs) and the
built-in evaluation (``workbench.core.evaluate``); the calibration text (awq, gptq, smoothquant) is the end of the
built-in text, which the evaluation (its start) does not read.

Usage:  python benchmarks/quant_accuracy.py --model demo:smollm2 --device cuda --out benchmarks/results \
            --stem quant_accuracy_h200_smollm2
        python benchmarks/quant_accuracy.py --device cpu --opts "int4-weight-only:algorithm=rtn,group_size=64;..."
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

G = "group_size=64"  # SmolLM2's hidden size 576 is not a multiple of 128: group 64 quantizes every Linear
DEFAULT_OPTS = [f"int4-weight-only:algorithm=rtn,{G}", f"int4-weight-only:algorithm=hqq,{G}",
                f"int4-weight-only:algorithm=awq,{G}", f"int4-weight-only:algorithm=gptq,{G}",
                "int8-weight-only", "int8-dynamic-act", "int8-smoothquant", "fp8-weight-only", "fp8-dynamic"]


def environment(torch, device: str) -> dict:
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "device": device}
    try:
        import torchao

        env["torchao"] = torchao.__version__
    except ImportError:
        env["torchao"] = None
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(0)
    else:
        from workbench.core.measure.cpu import read_cpuinfo, torch_capability

        env["cpu"] = read_cpuinfo()[0]
        env["cpu_capability"] = torch_capability()
    return env


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo:smollm2")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--opts", default=None, help="';'-separated --opt texts (default: the quantization catalogue)")
    ap.add_argument("--token-budget", type=int, default=8192, help="evaluation tokens (512-token windows)")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--stem", default="quant_accuracy")
    args = ap.parse_args()

    import torch

    from workbench.core import optimizations
    from workbench.core.data import load_eval
    from workbench.core.evaluate import evaluate
    from workbench.core.models import load
    from workbench.core.optimizations.context import ApplyContext
    from workbench.core.recipe import EvalSettings

    opts = args.opts.split(";") if args.opts else DEFAULT_OPTS
    settings = EvalSettings(token_budget=args.token_budget)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    env = environment(torch, args.device)
    print(json.dumps(env), flush=True)

    loaded = load(args.model, None, args.device)
    data = load_eval(settings, loaded.task)
    t0 = time.perf_counter()
    base, reference = evaluate(loaded.model, loaded.tokenizer, loaded.task, data, settings, args.device)
    rows.append({"opt": "baseline", "dtype": str(next(loaded.model.parameters()).dtype), **base,
                 "eval_seconds": time.perf_counter() - t0})
    print(json.dumps(rows[-1]), flush=True)
    pristine = copy.deepcopy(loaded.model).to("cpu")  # every method starts from this copy: one load (a GGUF
    # dequantizes for seconds on every load), and no method sees another's changes

    def write() -> None:
        (out / f"{args.stem}.json").write_text(json.dumps({"environment": env, "model": args.model,
                                                           "token_budget": args.token_budget, "rows": rows},
                                                          indent=1, default=str))
        (out / f"{args.stem}.md").write_text(markdown(env, args, rows))

    for text in opts:
        row: dict = {"opt": text}
        try:
            name, params = optimizations.parse_opt_arg(text)
            spec = optimizations.get(name)
            loaded.model = copy.deepcopy(pristine).to(args.device)
            ctx = ApplyContext(args.device, loaded.task, loaded.tokenizer, eval_settings=settings)
            t1 = time.perf_counter()
            rep = spec.apply(loaded.model, spec.resolve(params), ctx).report
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            row["apply_seconds"] = time.perf_counter() - t1
            metrics, _ = evaluate(loaded.model, loaded.tokenizer, loaded.task, data, settings, args.device,
                                  reference=reference)
            row.update(metrics)
            row["perplexity_delta_pct"] = 100 * (metrics["perplexity"] / base["perplexity"] - 1)
            for key in ("layers_quantized", "linear_bytes_before", "linear_bytes_after", "calibration_seconds",
                        "output_error_vs_rtn_median", "output_error_vs_rtn_max", "awq_exponent_median", "layout",
                        "tensor_types", "exportable", "alpha"):
                if key in rep:
                    row[key] = rep[key]
            loaded.model = None
        except Exception as exc:  # one failing method is a row, not the end of the run
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            traceback.print_exc()
        rows.append(row)
        print(json.dumps(row, default=str), flush=True)
        write()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    write()
    return 0


def markdown(env: dict, args, rows: list[dict]) -> str:
    where = env.get("gpu") or f"{env.get('cpu')} (torch CPU capability {env.get('cpu_capability')})"
    lines = [f"# Quantization accuracy — {args.model} on {where}", "",
             f"torch {env['torch']} · transformers {env['transformers']} · torchao {env['torchao']} · built-in "
             f"evaluation text, {args.token_budget} tokens in 512-token windows; KL(baseline || quantized) over the "
             f"baseline's top 64 tokens + the rest; calibration (awq, gptq, smoothquant) on the end of the built-in "
             f"text", "",
             "| optimization | perplexity | Δ ppl | KL | agreement | apply s | output error vs RTN (median) | "
             "linear bytes after/before |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['opt']} | **failed**: {r['error']} | | | | | | |")
            continue
        delta = "" if r["opt"] == "baseline" else f"{r['perplexity_delta_pct']:+.2f} %"
        ratio = (f"{r['linear_bytes_after'] / r['linear_bytes_before']:.3f}" if r.get("linear_bytes_before")
                 else "")
        err = r.get("output_error_vs_rtn_median")
        lines.append(f"| {r['opt']} | {r['perplexity']:.3f} | {delta} | {r['kl_divergence']:.4f} | "
                     f"{r['next_token_agreement']:.3f} | {r.get('apply_seconds', r.get('eval_seconds', 0)):.1f} | "
                     f"{'' if err is None else f'{err:.2f}x'} | {ratio} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
