"""One ladder table from several gpu_ladder.py runs (a device call is at most 10 minutes, so a full ladder is
several runs): rows from each run's gpu_ladder.json, or from the JSON lines of its log when the run was cut off
before writing (those lines carry every scalar of the row). Every row keeps the run it came from; MBU is each
run's own (its copy bandwidth was measured in that process).

Usage: python benchmarks/ladder_table.py --out results/gpu_ladder_h200 LABEL=PATH[:RUNG,RUNG] [...]
(``:RUNG,...`` keeps only those rungs of that file.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ORDER = ["hf-eager", "hf-sdpa", "static-cache", "graph-decode", "int8-wo", "int4-wo", "float8-wo", "float8-dyn"]


def read(path: Path) -> tuple[dict | None, list[dict]]:
    text = path.read_text()
    if path.suffix == ".json":
        doc = json.loads(text)
        return doc, doc.get("rows", [])
    return None, [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def rung_key(row: dict) -> tuple:
    base, _, variant = row["rung"].partition("+")
    return (row["model"], row["batch"], ORDER.index(base) if base in ORDER else 99, variant)


def main() -> int:
    from gpu_ladder import markdown

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="path without suffix: writes .json and .md")
    ap.add_argument("--note", action="append", default=[], help="a paragraph appended to the table (repeatable)")
    ap.add_argument("runs", nargs="+", help="LABEL=PATH")
    args = ap.parse_args()
    rows, docs, accuracy = [], {}, None
    for item in args.runs:
        label, _, path = item.partition("=")
        path, _, only = path.partition(":")
        doc, found = read(Path(path))
        if only:
            found = [r for r in found if r["rung"] in only.split(",")]
        if doc and found:
            docs[label] = {k: doc[k] for k in ("environment", "copy_bandwidth_Bps", "prompt", "new_tokens")}
        if doc and isinstance(doc.get("accuracy"), dict) and "bf16" in doc["accuracy"]:
            accuracy = doc["accuracy"]
        for r in found:
            if any((o["model"], o["batch"], o["rung"], o["run"]) == (r["model"], r["batch"], r["rung"], label)
                   for o in rows):
                continue  # a log line already read from the run's JSON
            rows.append({**{k: v for k, v in r.items() if k != "decode_ms_samples"}, "run": label})
    rows.sort(key=rung_key)
    first = next(iter(docs.values()))
    bws = [d["copy_bandwidth_Bps"] for d in docs.values()]
    merged = {**first, "copy_bandwidth_Bps": min(bws), "copy_bandwidth_range_Bps": [min(bws), max(bws)],
              "runs": docs, "rows": rows, "accuracy": accuracy}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(merged, indent=1, default=str))
    md = markdown(merged).replace(
        f"measured copy bandwidth {min(bws) / 1e12:.2f} TB/s",
        f"measured copy bandwidth {min(bws) / 1e12:.2f}–{max(bws) / 1e12:.2f} TB/s (each run its own)")
    lines = md.splitlines()
    for i, line in enumerate(lines):  # add the run column
        if line.startswith("| model |"):
            lines[i] = line + " run |"
        elif line.startswith("|---|---|---|---|---|---|---|---|"):
            lines[i] = line + "---|"
    md_rows = iter(rows)
    for i, line in enumerate(lines):
        if line.startswith("| ") and not line.startswith("| model |") and line.count("|") == 9:
            lines[i] = line + f" {next(md_rows)['run']} |"
    lines += [line for note in args.note for line in ("", note)]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
