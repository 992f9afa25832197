"""A tune report (``optbench tune --json``) as a Markdown table: trials in decision order, the frontier, the choice.

Usage: python benchmarks/tune_table.py REPORT.json [--title TEXT] > REPORT.md
"""

from __future__ import annotations

import argparse
import json
import sys


def fmt(v, spec: str = ".3f") -> str:
    return "" if v is None else format(v, spec)


def table(doc: dict, title: str) -> list[str]:
    env, c, base = doc.get("environment") or {}, doc["counts"], doc["baseline"]
    obj = doc["objective"]
    lines = [f"# {title}", "",
             f"{env.get('device_name', doc['device'])} · driver {env.get('driver', '-')} · torch "
             f"{env.get('torch')} · transformers {env.get('transformers')} · torchao {env.get('torchao', '-')}", "",
             f"Model `{doc['model'].get('ref')}` ({doc['model'].get('dtype')}, "
             f"{doc['model'].get('parameters', 0) / 1e9:.2f} B parameters); objective {obj.get('name')} "
             f"({obj.get('metric')}, {obj.get('unit', '')}); budget {doc['constraints']['budget_s']:.0f} s, "
             f"accuracy budget {(doc['constraints']['max_accuracy_drop'] or {}).get('text')}. "
             f"Wall time **{doc['seconds']:.0f} s**, stopped: {doc['stopped']}. Baseline (last measured) "
             f"{fmt(base.get('objective'))}; each trial's gain is against the baseline the worker measured nearest "
             f"in time (`baseline_objective`).", "",
             f"Space: {doc['space'].get('size')} candidates ({doc['space'].get('singles')} singles, "
             f"{doc['space'].get('pairs')} pairs, {doc['space'].get('triples')} triples), {len(doc['skipped'])} "
             f"skipped; anchor: {(doc['space'].get('anchor') or {}).get('label', 'none')}. Counts: "
             + ", ".join(f"{k} {v}" for k, v in c.items()) + ".", "",
             "| # | candidate | status | objective | baseline | gain | memory MB | size MB | trial s | reason |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for t in doc["trials"]:
        reason = (t.get("reason") or t.get("error") or "").replace("|", "/")
        lines.append(f"| {t['id']} | {t['label']} | {t['status']} | {fmt(t.get('objective'))} | "
                     f"{fmt(t.get('baseline_objective'))} | {fmt(t.get('gain'), '.2f')} | "
                     f"{fmt(t.get('memory_mb'), '.0f')} | {fmt(t.get('model_size_mb'), '.0f')} | "
                     f"{fmt(t.get('seconds'), '.1f')} | {reason[:160]} |")
    chosen = doc.get("chosen")
    lines += ["", "Frontier: " + ", ".join(f.get("label", "?") for f in doc["frontier"]) + ".",
              "", f"Chosen: **{chosen['label']}** (gain {chosen['gain']:.2f}×, {fmt(chosen['objective'])})."
              if chosen else "Chosen: none."]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report")
    ap.add_argument("--title", default="optbench tune")
    args = ap.parse_args()
    print("\n".join(table(json.load(open(args.report)), args.title)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
