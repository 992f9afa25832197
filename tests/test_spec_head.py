"""speculative:method=draft-head: a head trained on the model's own features drafts; the output stays the model's."""

from __future__ import annotations

import pytest

import torch

from tests.conftest import fast_recipe
from workbench.core import optimizations, pipeline
from workbench.core.errors import InputError
from workbench.core.models import load
from workbench.core.optimizations import spec_head
from workbench.core.optimizations.calibration import token_batches
from workbench.core.optimizations.context import ApplyContext

QUICK = {"method": "draft-head", "distill_steps": 30, "head_tokens": 1024, "draft_vocab": 256, "head_chats": 3}


def apply(loaded, **params):
    spec = optimizations.get("speculative")
    ctx = ApplyContext("cpu", loaded.task, loaded.tokenizer)
    ctx.extra["generate_kwargs"] = {}
    return spec.apply(loaded.model, spec.resolve(params), ctx), ctx


def test_training_raises_the_heads_agreement_with_the_model(tiny_llama):
    loaded = load(str(tiny_llama), None, "cpu")
    windows = token_batches(loaded.tokenizer, "causal-lm", 6, 1, 128)
    f, y, x = spec_head.features(loaded.model, windows)
    vocab = torch.bincount(y.flatten(), minlength=loaded.model.config.vocab_size).argsort(descending=True)[:256]
    head = spec_head.build(loaded.model, vocab.sort().values)
    before = spec_head.agreement(head, f[4:], y[4:], x[4:], depth=2)
    rep = spec_head.train(head, f[:4], y[:4], x[:4], seconds=60, steps=60, batch=256, lr=3e-3)
    after = spec_head.agreement(head, f[4:], y[4:], x[4:], depth=2)
    assert rep["steps"] == 60 and rep["loss_last"] < rep["loss_first"]
    assert after[0] > before[0] and after[0] > 0.05, (before, after)
    assert after[1] <= after[0]  # a second draft stands only where the first did


def test_draft_head_output_is_the_models_own(tiny_llama):
    loaded = load(str(tiny_llama), None, "cpu")
    applied, ctx = apply(loaded, **QUICK)
    rep = applied.report
    assert rep["greedy_check"]["identical"], rep["greedy_check"]
    assert rep["head_training"]["steps"] == 30 and len(rep["held_out_agreement"]) == rep["num_tokens"] == 3
    assert rep["features_tokens"] == 7 * 192  # 5 text windows + 3 chat replies, one of them held out
    assert rep["draft_bytes"] < 0.5 * sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    gen = ctx.extra["generate_kwargs"]["optbench_generator"](1, 40)
    ids = torch.arange(11, 31)[None]
    with torch.inference_mode():
        want = loaded.model.generate(ids, max_new_tokens=20, min_new_tokens=20, do_sample=False)
    got = gen.generate(ids, 20)
    assert torch.equal(got, want)
    live = rep["stats"]
    assert live["tokens"] >= 20 and live["target_forwards"] <= live["tokens"]



def test_draft_head_with_lookup_copies_from_the_text_and_stays_the_models_own(tiny_llama):
    """lookup=2: rounds whose last 2..3 tokens occurred earlier draft by prompt lookup, the others by the head."""
    loaded = load(str(tiny_llama), None, "cpu")
    applied, ctx = apply(loaded, **QUICK, lookup=2)
    gen = ctx.extra["generate_kwargs"]["optbench_generator"](1, 80)
    assert (gen.num_tokens, gen.head_tokens) == (spec_head.LOOKUP_TOKENS, 3)  # lookup rounds propose up to 10
    ids = torch.arange(11, 31).repeat(2)[None]  # a prompt that repeats itself: its 2-grams recur
    with torch.inference_mode():
        want = loaded.model.generate(ids, max_new_tokens=24, min_new_tokens=24, do_sample=False)
    live = applied.report["stats"]
    live.clear()
    live.update({"calls": 0, "tokens": 0, "target_forwards": 0, "proposed": 0})
    got = gen.generate(ids, 24)
    assert torch.equal(got, want)
    text = ids[0].tolist() + want[0, 40:].tolist()
    recurring = sum(any(text[j - 2:j] == text[i - 2:i] for i in range(2, j)) for j in range(41, len(text)))
    assert recurring > 0 and live.get("lookup_rounds", 0) > 0, (recurring, live)
    assert live["target_forwards"] < live["tokens"] + 1

def test_draft_head_runs_inside_graph_decode_in_a_pipeline(tiny_llama):
    r = fast_recipe(str(tiny_llama), [("speculative", {**QUICK, "lookup": 2}), ("graph-decode", {})])
    report = pipeline.run(r.validate(), lambda *a, **k: None)
    spec, graph = report["optimization_reports"]
    assert graph["speculative"]["method"] == "draft-head"
    assert spec["greedy_check"]["identical"] and spec["greedy_check"]["loop"] == "graph-decode"
    assert spec["stats"]["tokens"] > 0 and report["optimized"]["decode_ms_per_token"]["count"] >= 2


def test_draft_head_needs_a_llama_family_model(tiny_bert):
    loaded = load(str(tiny_bert), None, "cpu")
    with pytest.raises(InputError):
        apply(loaded, **QUICK)
