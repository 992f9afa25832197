"""The engine on tiny real-architecture models: report shape, optimization effects, caching, export."""

import pytest

from tests.conftest import fast_recipe
from workbench.core import pipeline
from workbench.core.export import load_artifact


def run(recipe, artifact=None):
    events = []
    report = pipeline.run(recipe.validate(), lambda type_, **k: events.append((type_, k)), artifact_dir=artifact)
    return report, events


STAT_KEYS = {"mean", "p50", "p90", "p99", "std", "min", "max", "count", "samples"}


def test_causal_lm_report_is_complete(tiny_llama):
    report, events = run(fast_recipe(str(tiny_llama)))
    assert report["task"] == "causal-lm"
    for phase in ("baseline", "optimized"):
        p = report[phase]
        for key in ("latency_ms", "ttft_ms", "decode_ms_per_token"):
            assert set(p[key]) == STAT_KEYS
            assert p[key]["count"] == len(p[key]["samples"]) >= 2
            assert p[key]["min"] <= p[key]["p50"] <= p[key]["p90"] <= p[key]["p99"] <= p[key]["max"]
        # ttft + decode steps cannot exceed the whole generate call
        assert p["ttft_ms"]["p50"] + 3 * p["decode_ms_per_token"]["p50"] <= p["latency_ms"]["max"] * 1.01
        assert p["throughput"]["unit"] == "decode tokens/s" and p["throughput"]["value"] > 0
        assert p["memory_mb"]["rss_peak"] > 50 and p["memory_mb"]["cuda_peak_allocated"] is None
        assert p["model_size_mb"] > 0
    m = report["baseline"]["metrics"]
    assert 1 < m["perplexity"] < 1e6 and m["tokens_scored"] == 64
    assert set(report["accuracy"]) == {"perplexity", "next_token_agreement", "kl_divergence"}
    types = {t for t, _ in events}
    assert {"progress", "sample", "log", "model", "result"} <= types


def test_prune_measured_sparsity_within_one_percent(tiny_llama):
    report, _ = run(fast_recipe(str(tiny_llama), [("prune-l1", {"sparsity": 0.6})]))
    rep = report["optimization_reports"][0]
    assert abs(rep["measured_sparsity"] - 0.6) < 0.01
    assert report["accuracy"]["kl_divergence"]["value"] > 0  # pruning changed the outputs
    assert report["accuracy"]["kl_divergence"]["baseline"] == 0


def test_int8_dynamic_shrinks_linear_weights_and_exports(tiny_bert, tmp_path):
    report, _ = run(fast_recipe(str(tiny_bert), [("int8-dynamic", {})]), artifact=str(tmp_path / "art"))
    rep = report["optimization_reports"][0]
    assert rep["linear_bytes_before"] >= 2 * rep["linear_bytes_after"]
    assert report["optimized"]["model_size_mb"] < report["baseline"]["model_size_mb"]
    assert report["export"]["verified"] and report["export"]["format"] == "optbench-int8-dynamic"
    model, _, manifest = load_artifact(tmp_path / "art")
    assert manifest["recipe"]["optimizations"][0]["name"] == "int8-dynamic"
    cos = report["accuracy"]["cosine_to_baseline"]
    assert 0.5 < cos["value"] <= 1.0 + 1e-6 and cos["baseline"] == 1.0


def test_export_loads_with_plain_transformers(tiny_llama, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    report, _ = run(fast_recipe(str(tiny_llama), [("bf16", {})]), artifact=str(tmp_path / "art"))
    assert report["export"]["verified"]
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "art")
    assert plain.dtype == torch.bfloat16
    assert (tmp_path / "art" / "model.safetensors").is_file()
    assert (tmp_path / "art" / "optbench.json").is_file()


def test_baseline_accuracy_is_cached(tiny_bert):
    first, _ = run(fast_recipe(str(tiny_bert)))
    second, events = run(fast_recipe(str(tiny_bert), [("prune-l1", {"sparsity": 0.3})]))
    assert first["baseline"]["accuracy_cached"] is False
    assert second["baseline"]["accuracy_cached"] is True
    assert second["baseline"]["metrics"] == first["baseline"]["metrics"]
    assert any(t == "log" and "from cache" in k["text"] for t, k in events)
    # the latency baseline is always re-measured in the same run
    assert second["baseline"]["latency_ms"]["samples"] != first["baseline"]["latency_ms"]["samples"]


def test_classifier_accuracy_with_labels(tiny_bert_cls, tmp_path):
    f = tmp_path / "labels.csv"
    f.write_text("sentence,y\n" + "\n".join(f"text number {i},label{i % 3}" for i in range(12)))
    r = fast_recipe(str(tiny_bert_cls), [("prune-l1", {"sparsity": 0.5})])
    r.eval.source, r.eval.text_column, r.eval.label_column = str(f), "sentence", "y"
    report, _ = run(r)
    assert report["task"] == "seq-cls"
    assert set(report["accuracy"]) == {"accuracy", "agreement", "kl_divergence"}
    assert 0 <= report["accuracy"]["accuracy"]["value"] <= 1


def test_monitor_samples_arrive(tiny_bert):
    _, events = run(fast_recipe(str(tiny_bert)))
    samples = [k for t, k in events if t == "sample"]
    assert samples and all(s["rss_mb"] > 0 and s["sys_mem_total_mb"] > 0 for s in samples)
