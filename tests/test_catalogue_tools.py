"""Batch-size sweep and strategy recommender (core functions and their CLI subcommands)."""

import argparse
import json

import pytest

from workbench.cli import recommend, sweep
from workbench.cli.checks import error_text
from workbench.core.errors import InputError
from workbench.core.sweep import knee, parse_batches


def test_knee_is_the_smallest_batch_near_the_best_throughput():
    points = [{"batch": b, "throughput": t, "latency_ms": b / t * 1000}
              for b, t in ((1, 100), (2, 180), (4, 320), (8, 330), (16, 340))]
    k = knee(points, 0.9)
    assert k["batch"] == 4 and "90%" in k["rule"]
    assert knee(points, 1.0)["batch"] == 16
    assert knee([], 0.9) is None
    assert parse_batches("8,1,2,2") == [1, 2, 8]
    with pytest.raises(InputError):
        parse_batches("0,2")


def parser():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    recommend.add_parser(sub)
    sweep.add_parser(sub)
    return p, {"recommend": recommend.cmd_recommend, "sweep": sweep.cmd_sweep}


def test_sweep_command_json(tiny_bert, capsys):
    p, handlers = parser()
    args = p.parse_args(["sweep", "--model", str(tiny_bert), "--batches", "1,4", "--seq-len", "16",
                         "--min-iters", "2", "--min-seconds", "0", "--json"])
    assert handlers["sweep"](args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [pt["batch"] for pt in doc["points"]] == [1, 4]
    assert all(pt["throughput"] > 0 and pt["latency_ms"] > 0 for pt in doc["points"])
    assert doc["knee"]["batch"] in (1, 4) and doc["throughput_unit"] == "samples/s"


def test_sweep_applies_optimizations_first(tiny_llama):
    from workbench.core.sweep import batch_sweep

    r = batch_sweep(str(tiny_llama), [1, 2], [("int8-dynamic", {})], seq_len=8, new_tokens=3, min_iters=1,
                    min_seconds=0)
    assert r["optimizations"][0]["name"] == "int8-dynamic"
    assert r["throughput_unit"] == "decode tokens/s" and r["points"][1]["decode_ms_per_token"] > 0


def test_recommender_rules_follow_hardware_and_budget(tiny_llama, tiny_bert):
    from workbench.core.recommend import Constraints, hardware, model_facts, propose

    plain = {**hardware("cpu", measure=False), "bf16_native": False}  # e.g. an AVX2-only EPYC
    bf16 = {**plain, "bf16_native": True}
    bert, llama = model_facts(str(tiny_bert)), model_facts(str(tiny_llama))

    def names(facts, hw, **c):
        steps = propose(facts, hw, Constraints(**c))
        assert all(s["reason"] for s in steps)
        return [s["name"] for s in steps]

    assert names(bert, plain, max_drop=1.0) == ["int8-selective"]
    assert names(bert, plain, max_drop=10.0) == ["int8-dynamic"]
    assert names(bert, bf16, max_drop=1.0) == ["bf16"]
    assert names(llama, plain, max_drop=2.0) == ["int8-weight-only"]
    assert names(llama, bf16, max_drop=2.0) == ["bf16"]
    assert names(llama, bf16, max_drop=2.0, memory_mb=4.0) == ["bf16", "int8-weight-only"]  # a cap forces more


def test_recommender_estimates_and_checks(tiny_llama):
    from workbench.core.recommend import Constraints, check, recommend

    llama = recommend(str(tiny_llama), Constraints(max_drop=2.0), device="cpu", measure=False)
    assert llama["model"]["params"] > 0 and llama["recipe"]["optimizations"]
    est = llama["estimate"]
    assert est["kv_cache_mb"] > 0 and est["weights_mb"] > 0
    # estimate vs a measured report
    fake = {"device": "cpu", "task": "causal-lm", "speedup": 1.5,
            "optimized": {"model_size_mb": est["weights_mb"] * 2 ** 20 / 1e6 * 1.1, "memory_mb": {"rss_peak": 500.0},
                          "latency_ms": {"p50": 10.0}, "decode_ms_per_token": {"p50": 1.0}},
            "accuracy": {"next_token_agreement": {"value": 0.97, "baseline": 1.0, "higher_is_better": True}}}
    chk = check(llama, fake)
    weights = next(r for r in chk["rows"] if r["what"].startswith("weights"))
    assert weights["error"] == pytest.approx(1 / 1.1 - 1, rel=1e-6)
    assert chk["accuracy_drop_percent"]["next_token_agreement"] == pytest.approx(3.0)
    assert chk["within_budget"]["next_token_agreement"] is False


def test_recommender_weight_estimate_matches_the_real_model(tiny_bert):
    from workbench.core.measure.memory import model_size_bytes
    from workbench.core.models import load
    from workbench.core.recommend import Constraints, estimate, hardware, model_facts

    facts = model_facts(str(tiny_bert))
    est = estimate(facts, [], hardware("cpu", measure=False), Constraints())
    real = model_size_bytes(load(str(tiny_bert), None, "cpu").model) / 2 ** 20
    assert est["weights_mb"] == pytest.approx(real, rel=0.02)


def test_recommend_command_rejects_bad_input(tiny_bert):
    p, handlers = parser()
    with pytest.raises(InputError, match="max-drop"):
        handlers["recommend"](p.parse_args(["recommend", "--model", str(tiny_bert), "--max-drop", "200"]))
    with pytest.raises(InputError) as bad_model:
        handlers["recommend"](p.parse_args(["recommend", "--model", "demo:nope"]))
    assert error_text(bad_model.value.message, bad_model.value.param).startswith("--model demo:nope")


def test_recommender_picks_the_int8_kernel_measured_to_pay_at_the_batch(tiny_llama, monkeypatch):
    """On CUDA a memory cap that int8 weights meet: GemLite's kernel where gemlite imports and paid at this batch
    and size (_batch_notes: batch 1 at the 1B shape, the nearest to a tiny model), else torchao's, with the batch
    at which it was measured to fall behind bf16 said."""
    import importlib.util

    from workbench.core.recommend import Constraints, model_facts, propose

    llama = model_facts(str(tiny_llama))
    gpu = {"gpu": {"name": "NVIDIA H200", "memory_mb": 143_000.0, "compute_capability": "9.0", "count": 1,
                   "cc": (9, 0)}, "device": "cuda:0"}
    cap = llama["params"] * 2 / 2 ** 20 / 0.9  # bf16 weights over 80 % of the cap, int8 well within it
    real = importlib.util.find_spec

    def step(batch, gemlite):
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: (object() if gemlite else None) if name == "gemlite" else real(name, *a))
        steps = propose(llama, gpu, Constraints(max_drop=2.0, memory_mb=cap, batch=batch))
        return next(s for s in steps if s["name"] == "int8-weight-only")

    assert step(1, True)["params"] == {"kernel": "gemlite"} and "not exportable" in step(1, True)["reason"]
    at8 = step(8, True)  # neither paid at batch 8 (GemLite 0.81x, torchao 0.05x at 1B): GemLite, the limit said
    assert at8["params"] == {"kernel": "gemlite"} and "may be slower than bf16" in at8["reason"]
    assert step(1, False)["params"] == {} and "slower than bf16" not in step(1, False)["reason"]
    at8 = step(8, False)  # without gemlite: torchao's kernel, and where it fell behind said
    assert at8["params"] == {} and "0.15x" in at8["reason"]
