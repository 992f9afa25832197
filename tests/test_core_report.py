"""The typed run report reads and writes the JSON document unchanged, and the README's schema is generated from it."""

from __future__ import annotations

import json
from pathlib import Path

from workbench.core.report import AccuracyDelta, Phase, RunReport, Stats, schema_markdown

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT / "tests/tui/fixtures/report_llama.json"  # a real final report (tiny Llama + int8-dynamic)


def test_a_real_report_round_trips_byte_for_byte():
    doc = json.loads(REAL.read_text())
    report = RunReport.from_dict(doc)
    assert isinstance(report.baseline, Phase) and isinstance(report.baseline.latency_ms, Stats)
    assert isinstance(report.accuracy["perplexity"], AccuracyDelta)
    assert report.speedup == doc["speedup"]
    assert report.baseline.latency_ms.p50 == doc["baseline"]["latency_ms"]["p50"]
    assert json.dumps(report.to_dict()) == json.dumps(doc)  # same keys, same order, same values


def test_unknown_keys_survive_and_absent_keys_stay_absent():
    doc = json.loads(REAL.read_text())
    doc["from_a_newer_version"] = {"x": 1}
    doc["baseline"]["latency_ms"]["p999"] = 9.0
    del doc["optimized"]["ttft_ms"]
    out = RunReport.from_dict(doc).to_dict()
    assert out["from_a_newer_version"] == {"x": 1} and out["baseline"]["latency_ms"]["p999"] == 9.0
    assert "ttft_ms" not in out["optimized"] and "accuracy_cached" not in out["optimized"]


def test_readme_schema_is_the_generated_one():
    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- report-schema:start -->\n", "<!-- report-schema:end -->"
    assert start in readme and end in readme, "README lost its generated report schema markers"
    body = readme.split(start, 1)[1].split(end, 1)[0]
    assert body == schema_markdown(), "README's report schema is stale: python -m workbench.core.report"


def test_every_report_key_the_pipeline_writes_is_documented():
    doc = json.loads(REAL.read_text())
    report = RunReport.from_dict(doc)
    assert report.extra == {} and report.baseline.extra == {} and report.optimized.extra == {}
    assert report.baseline.memory_mb.extra == {}
