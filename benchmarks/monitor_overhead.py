"""What the background monitor costs: throughput with the sampler off vs on, measured A B A B in one run.

Usage: python benchmarks/monitor_overhead.py [--model demo:minilm] [--device auto] [--rounds 4] [--seconds 3]
Writes benchmarks/results/monitor_overhead-<device>.json and prints a table. Also times one sample() call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workbench.core.measure.env import environment  # noqa: E402
from workbench.core.measure.monitor import Monitor  # noqa: E402
from workbench.core.measure.timing import bench  # noqa: E402
from workbench.core.models import load  # noqa: E402
from workbench.core.recipe import BenchSettings  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo:minilm")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rates", default="4,20", help="sampling rates (Hz) to compare against off")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    loaded = load(args.model, device=args.device)
    settings = BenchSettings(batch=args.batch, seq_len=128, new_tokens=32, warmup=2, min_iters=5,
                             min_seconds=args.seconds)
    rates = [float(r) for r in args.rates.split(",")]
    configs = ["off"] + [f"{r:g}Hz" for r in rates]
    results: dict[str, list[float]] = {c: [] for c in configs}
    bench(loaded.model, loaded.tokenizer, loaded.task, settings, loaded.device)  # warm everything once
    for rnd in range(args.rounds):
        order = configs if rnd % 2 == 0 else list(reversed(configs))  # A B A B, then B A B A
        for cfg in order:
            mon = None
            if cfg != "off":
                mon = Monitor(hz=float(cfg[:-2]), on_sample=lambda s: json.dumps(s)).start()  # serialise like a job
            r = bench(loaded.model, loaded.tokenizer, loaded.task, settings, loaded.device)
            if mon:
                mon.stop()
            results[cfg].append(r["throughput"]["value"])
            print(f"round {rnd + 1} {cfg:>6}: {r['throughput']['value']:.2f} {r['throughput']['unit']}",
                  file=sys.stderr)
    mon = Monitor(hz=1)
    n = 200
    t0 = time.perf_counter()
    for _ in range(n):
        mon.sample()
    per_sample_ms = (time.perf_counter() - t0) / n * 1000
    off = statistics.median(results["off"])
    table = []
    for cfg in configs:
        med = statistics.median(results[cfg])
        table.append({"config": cfg, "median_throughput": med, "samples": results[cfg],
                      "overhead_percent": (1 - med / off) * 100 if cfg != "off" else 0.0})
    unit = "decode tokens/s" if loaded.task == "causal-lm" else "samples/s"
    doc = {"model": args.model, "device": loaded.device, "unit": unit, "rounds": args.rounds,
           "seconds_per_measurement": args.seconds, "sample_call_ms": per_sample_ms, "results": table,
           "environment": environment(loaded.device)}
    out = Path(args.out or Path(__file__).parent / "results" / f"monitor_overhead-{loaded.device.split(':')[0]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print(f"{'config':>8} {'median ' + unit:>24} {'overhead %':>11}")
    for row in table:
        print(f"{row['config']:>8} {row['median_throughput']:>24.2f} {row['overhead_percent']:>11.2f}")
    print(f"one sample() call: {per_sample_ms:.3f} ms  ·  written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
