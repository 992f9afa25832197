"""Ordering and compatibility rules of the catalogue, and composed recipes that really run."""

import pytest

from tests.conftest import fast_recipe
from workbench.core import optimizations
from workbench.core.errors import InputError

NEW = {"int8-weight-only", "int8-dynamic-act", "int4-weight-only", "fp8-weight-only", "fp8-dynamic", "int8-selective",
       "qat", "prune-heads", "prune-ffn", "sparse-2of4", "distill", "drop-layers", "early-exit", "attention",
       "kv-cache", "compile"}


def check(opts, ref="demo:smollm2", task="causal-lm", device="cpu"):
    r = fast_recipe(ref, opts)
    r.model.task = task
    return r.validate(device=device)


def test_every_catalogue_entry_is_registered_and_described():
    specs = {s.name: s for s in optimizations.all_specs()}
    assert NEW <= set(specs)
    for name in NEW:
        d = specs[name].describe()
        assert d["summary"] and d["stage"] and d["exportable"] in ("yes", "custom", "no")
        for p in d["params"]:
            assert p["help"], (name, p["name"])


@pytest.mark.parametrize("opts", [
    [("distill", {}), ("prune-heads", {}), ("prune-ffn", {}), ("int8-dynamic", {}), ("kv-cache", {}),
     ("compile", {})],
    [("drop-layers", {}), ("bf16", {}), ("int8-weight-only", {}), ("attention", {"impl": "sdpa"})],
    [("prune-ffn", {}), ("qat", {"scheme": "8da8w"})],
    [("distill", {}), ("int8-selective", {}), ("graph-decode", {"mode": "eager"})],
])
def test_valid_orders(opts):
    assert [s.name for s in check(opts).optimizations] == [n for n, _ in opts]


@pytest.mark.parametrize("opts,task,device,message", [
    ([("int8-dynamic", {}), ("prune-heads", {})], "causal-lm", "cpu", "prune-heads: must come before int8-dynamic"),
    ([("compile", {}), ("kv-cache", {})], "causal-lm", "cpu", "kv-cache: must come before compile"),
    ([("int8-dynamic", {}), ("distill", {})], "causal-lm", "cpu", "distill: must come before"),
    ([("qat", {}), ("int8-weight-only", {})], "causal-lm", "cpu", "both are weight-quantization"),
    ([("int8-selective", {}), ("int8-dynamic", {})], "causal-lm", "cpu", "both are weight-quantization"),
    ([("bf16", {}), ("int8-selective", {})], "causal-lm", "cpu", "drop the half-precision cast"),
    ([("fp16", {}), ("int8-weight-only", {})], "causal-lm", "cpu", "drop the fp16 cast"),
    ([("kv-cache", {}), ("graph-decode", {})], "causal-lm", "cpu", "own static cache"),
    ([("compile", {}), ("graph-decode", {})], "causal-lm", "cpu", "cannot be combined"),
    ([("early-exit", {}), ("compile", {})], "encoder", "cpu", "would break the graph at every check"),
    ([("early-exit", {})], "causal-lm", "cpu", "does not apply to causal-lm"),
    ([("kv-cache", {})], "encoder", "cpu", "does not apply to encoder"),
    ([("fp8-dynamic", {})], "causal-lm", "cpu", "does not run on cpu"),
    ([("sparse-2of4", {}), ("int8-weight-only", {})], "causal-lm", "cuda", "both are weight-quantization"),
    ([("qat", {"scheme": "int2"})], "causal-lm", "cpu", "scheme='int2' is not allowed"),
    ([("prune-heads", {"fraction": 1.5})], "causal-lm", "cpu", "out of range"),
])
def test_rejected(opts, task, device, message):
    with pytest.raises(InputError, match=message):
        check(opts, task=task, device=device)


def test_composed_recipe_runs_and_exports(tiny_bert, tmp_path):
    from workbench.core import pipeline

    r = fast_recipe(str(tiny_bert), [("drop-layers", {"keep": 1, "which": "first"}), ("prune-ffn", {"fraction": 0.5}),
                                     ("int8-dynamic", {}), ("attention", {"impl": "eager"})])
    report = pipeline.run(r.validate(), lambda *a, **k: None, artifact_dir=str(tmp_path / "art"))
    names = [rep["name"] for rep in report["optimization_reports"]]
    assert names == ["drop-layers", "prune-ffn", "int8-dynamic", "attention"]
    assert report["optimized"]["model_size_mb"] < report["baseline"]["model_size_mb"]
    assert report["export"]["verified"] and report["export"]["format"] == "optbench-int8-dynamic"
