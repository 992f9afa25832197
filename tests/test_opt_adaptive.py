"""Adaptive inference: static layer dropping (exportable, generation still works) and early exit (fewer blocks on
easy inputs, counted live)."""

import pytest

import torch  # a pinned dependency: a broken install must fail, not skip

from workbench.core import optimizations  # noqa: E402
from workbench.core.export import load_artifact, save  # noqa: E402
from workbench.core.models import load  # noqa: E402
from workbench.core.optimizations.context import ApplyContext  # noqa: E402


@pytest.fixture(scope="module")
def bert6(tmp_path_factory):
    from tests.fixtures.tiny import build_bert

    return build_bert(tmp_path_factory.mktemp("a") / "bert6", layers=6)


@pytest.fixture(scope="module")
def bert6_cls(tmp_path_factory):
    from tests.fixtures.tiny import build_bert

    return build_bert(tmp_path_factory.mktemp("a") / "bert6cls", classes=3, layers=6)


@pytest.fixture(scope="module")
def llama4(tmp_path_factory):
    from tests.fixtures.tiny import build_llama

    return build_llama(tmp_path_factory.mktemp("a") / "llama4", layers=4)


def apply(loaded, name, **params):
    spec = optimizations.get(name)
    ctx = ApplyContext("cpu", loaded.task, loaded.tokenizer)
    return {"name": name, "exportable": spec.exportable, **spec.apply(loaded.model, spec.resolve(params), ctx).report}


def test_drop_layers_choices(llama4):
    cases = {("spread", 3): [0, 2, 3], ("first", 2): [0, 1]}
    for (which, keep), expected in cases.items():
        loaded = load(str(llama4), None, "cpu")
        rep = apply(loaded, "drop-layers", which=which, keep=keep)
        assert rep["kept"] == expected and loaded.model.config.num_hidden_layers == keep
    loaded = load(str(llama4), None, "cpu")
    assert apply(loaded, "drop-layers", which="list", layers="0,-1")["kept"] == [0, 3]
    loaded = load(str(llama4), None, "cpu")
    rep = apply(loaded, "drop-layers", which="importance", keep=2, calib_samples=4)
    scores = {int(k): v for k, v in rep["removal_error"].items()}
    assert rep["kept"] == sorted(sorted(scores, key=scores.get, reverse=True)[:2])


def test_dropped_model_generates_and_exports(llama4, tmp_path):
    from transformers import AutoModelForCausalLM

    loaded = load(str(llama4), None, "cpu")
    rep = apply(loaded, "drop-layers", fraction=0.5, which="spread")
    assert rep["layers_after"] == 2 and rep["params_after"] < rep["params_before"]
    ids = torch.arange(5, 25)[None]
    out = loaded.model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    rec = save(loaded.model, loaded.tokenizer, "causal-lm", tmp_path / "art", {}, [rep], "cpu")
    assert rec["verified"]
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "art")
    assert plain.config.num_hidden_layers == 2
    assert torch.equal(plain.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False), out)


def test_confident_classifier_exits_early_unconfident_runs_all(bert6_cls):
    loaded = load(str(bert6_cls), None, "cpu")
    with torch.no_grad():
        loaded.model.classifier.weight.mul_(200.0)  # every prediction becomes confident
    rep = apply(loaded, "early-exit", threshold=0.9, min_layers=2)
    assert rep["mean_layers_calibration"] == 2.0
    assert all(r["mean_layers"] <= 6 for r in rep["tradeoff"])
    enc = loaded.tokenizer(["a short text", "another one here"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        loaded.model(**enc)
    assert rep["runtime"]["mean_layers"] == 2.0 and rep["runtime"]["samples"] == 2  # counted live
    unsure = load(str(bert6_cls), None, "cpu")
    rep2 = apply(unsure, "early-exit", threshold=1.0)  # a probability of 1.0 is never reached: all blocks run
    assert rep2["mean_layers_calibration"] == 6.0 and rep2["agreement_with_full_calibration"] == 1.0


def test_complexity_rule_gives_short_inputs_fewer_blocks(bert6):
    loaded = load(str(bert6), None, "cpu")
    rep = apply(loaded, "early-exit", criterion="complexity", complexity_tokens=64, min_layers=1)
    state = loaded.model._optbench_exit_state
    short = loaded.tokenizer(["yes"] * 2, return_tensors="pt")
    long = loaded.tokenizer(["word " * 200] * 2, return_tensors="pt", truncation=True, max_length=128)
    with torch.inference_mode():
        loaded.model(**short)
        used_short = state.used.clone()
        full_short = loaded.model(**long)
        used_long = state.used.clone()
    assert used_short.max() < used_long.min() and used_long.min() == 6
    assert full_short.last_hidden_state.shape[1] == long["input_ids"].shape[1]
    assert {row["complexity_tokens"] for row in rep["tradeoff"]} >= {16, 64, 256}


def test_encoder_confidence_exit_runs_fewer_blocks_at_a_loose_threshold(bert6):
    loaded = load(str(bert6), None, "cpu")
    rep = apply(loaded, "early-exit", threshold=0.0, min_layers=2)
    assert rep["mean_layers_calibration"] == 2.0 and rep["cosine_to_full_calibration"] < 1.0
    by = {row["threshold"]: row["mean_layers"] for row in rep["tradeoff"]}
    assert by[0.999] >= by[0.0]
