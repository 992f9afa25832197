"""onednn-linear: Linear layers on oneDNN-packed weights compute what nn.Linear computes, leave the parameters (and
so the state dict and the export) as they were, follow in-place weight changes, fall back where gradients are
needed, and pack a speculative draft too. No assertion on speed (benchmarks/onednn_linear.py measures it)."""

import copy

import pytest

import torch  # a pinned dependency: a broken install must fail, not skip

from tests.conftest import fast_recipe
from workbench.core import optimizations, pipeline
from workbench.core.errors import InputError
from workbench.core.models import load
from workbench.core.optimizations.context import ApplyContext
from workbench.core.optimizations.onednn_linear import pack_linears, unpack_linears

def test_the_pinned_torch_has_onednn():
    assert torch.backends.mkldnn.is_available()  # the pinned CPU build ships it: its absence is a broken install


def apply(model, extra=None, **params):
    spec = optimizations.get("onednn-linear")
    ctx = ApplyContext("cpu", "causal-lm", None)
    ctx.extra["generate_kwargs"] = extra or {}
    return spec.apply(model, spec.resolve(params), ctx).report


def greedy(model, ids, n):
    with torch.inference_mode():
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                              min_new_tokens=n, do_sample=False, pad_token_id=0)


def rel_err(a, b):
    return float((a.detach().float() - b.detach().float()).norm() / b.detach().float().norm())


def test_packed_model_computes_the_same_logits_and_tokens(tiny_llama):
    model = load(str(tiny_llama), None, "cpu").model.eval()
    ids = torch.randint(5, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        before = model(input_ids=ids).logits
    tokens = greedy(model, ids[:1], 16)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rep = apply(model)
    n_linear = sum(type(m) is torch.nn.Linear for m in model.modules())
    assert rep["packed"] == n_linear > 0 and rep["extra_bytes"] > 0 and rep["skipped"] == {}
    with torch.inference_mode():
        after = model(input_ids=ids).logits
    assert rel_err(after, before) < 1e-4  # fp32, another summation order
    assert torch.equal(greedy(model, ids[:1], 16), tokens)
    after_state = model.state_dict()
    assert after_state.keys() == state.keys()
    assert all(torch.equal(after_state[k], v) for k, v in state.items())


def test_an_in_place_weight_change_is_followed_and_unpack_restores_linear(tiny_llama):
    model = load(str(tiny_llama), None, "cpu").model.eval()
    apply(model)
    lin = model.get_output_embeddings()
    x = torch.randn(3, lin.in_features)
    with torch.no_grad():
        lin.weight.mul_(2.0)  # in place: the packed copy is stale and must be packed again
        got = lin(x)
    assert rel_err(got, torch.nn.functional.linear(x, lin.weight)) < 1e-5
    assert unpack_linears(model) > 0
    assert "forward" not in vars(lin)


def test_gradients_flow_through_the_plain_path(tiny_llama):
    model = load(str(tiny_llama), None, "cpu").model
    apply(model)
    ids = torch.randint(5, 1000, (1, 8))
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert model.get_output_embeddings().weight.grad is not None
    assert float(model.get_output_embeddings().weight.grad.abs().sum()) > 0


def test_a_deep_copy_of_a_packed_model_computes_on_its_own_weights(tiny_llama):
    model = load(str(tiny_llama), None, "cpu").model.eval()
    apply(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
    ids = torch.randint(5, 1000, (1, 12))
    with torch.inference_mode():
        a, b = model(input_ids=ids).logits, twin(input_ids=ids).logits
    assert rel_err(a, b) > 1e-2  # the twin did not run on the original's packed weights


def test_bf16_layers_pack_where_onednn_has_bf16_kernels_else_are_reported(tiny_llama):
    """On an AVX2-only CPU oneDNN has no bf16 linear: the layers stay as they are and the report says why; with
    AVX-512 BW/VL/DQ they pack and compute within bf16's rounding of the plain layer."""
    model = load(str(tiny_llama), None, "cpu").model.eval().to(torch.bfloat16)
    ids = torch.randint(5, 1000, (1, 12))
    with torch.inference_mode():
        before = model(input_ids=ids).logits
    try:
        rep = apply(model)
    except InputError as exc:
        assert "no Linear layer could be packed" in exc.message and "bfloat16" in exc.message
        return
    assert rep["packed"] > 0
    with torch.inference_mode():
        assert rel_err(model(input_ids=ids).logits, before) < 2e-2


def test_nothing_to_pack_is_refused_with_the_reason():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4))
    with pytest.raises(InputError, match="onednn-linear: no Linear layer could be packed"):
        apply(model)
    half = torch.nn.Sequential(torch.nn.Linear(4, 4).half())
    with pytest.raises(InputError, match="float16"):
        apply(half)


def test_the_recipe_refuses_it_on_cuda_and_beside_the_cpu_runtimes():
    r = fast_recipe("demo:smollm2", [("onednn-linear", {})])
    with pytest.raises(InputError, match="does not run on cuda"):
        r.validate(device="cuda")
    r = fast_recipe("demo:smollm2", [("compile", {}), ("onednn-linear", {})])
    with pytest.raises(InputError, match="inductor lowers the Linear layers itself"):
        r.validate(device="cpu")


def test_a_speculative_draft_is_packed_too_and_the_output_stays_the_models(tiny_llama):
    """speculative (draft of the model's own blocks) then onednn-linear then graph-decode's loop (eager on a CPU):
    both models packed, tokens equal to plain greedy decoding."""
    loaded = load(str(tiny_llama), None, "cpu")
    model = loaded.model.eval()
    ids = torch.tensor([[101, 7592, 2088, 2003, 1037, 2023, 2003]])
    want = greedy(model, ids, 12)
    gk: dict = {}
    for name, params in (("speculative", {"method": "draft", "draft_layers": 1}), ("onednn-linear", {}),
                         ("graph-decode", {"mode": "eager"})):
        spec = optimizations.get(name)
        ctx = ApplyContext("cpu", "causal-lm", loaded.tokenizer)
        ctx.extra["generate_kwargs"] = gk
        rep = spec.apply(model, spec.resolve(params), ctx).report
        if name == "onednn-linear":
            assert rep["packed"] > 0 and rep["draft"]["packed"] > 0
    gen = gk["optbench_generator"](1, 64)
    assert torch.equal(gen.generate(ids, 12), want)


def test_pipeline_run_exports_the_unpacked_parameters(tiny_llama, tmp_path):
    r = fast_recipe(str(tiny_llama), [("onednn-linear", {})])
    report = pipeline.run(r.validate(device="cpu"), lambda *a, **k: None, artifact_dir=str(tmp_path / "art"))
    step = report["optimization_reports"][0]
    assert step["name"] == "onednn-linear"
    assert report["export"]["verified"] is True


def test_pack_linears_counts_what_it_left_alone():
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Linear(32, 32))
    quantize_(model[1], Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: True)
    rep = pack_linears(model)
    assert rep["packed"] == 1 and rep["skipped"] == {"quantized (tensor subclass)": 1}


def test_the_memory_estimate_counts_the_packed_copy(tiny_llama):
    """recommend's estimate: onednn-linear adds one more float copy of every Linear weight; after int8 weight-only
    (which it leaves alone) it adds nothing."""
    from workbench.core.recommend import Constraints, estimate, hardware, model_facts

    facts = model_facts(str(tiny_llama))
    hw = hardware("cpu", measure=False)
    plain = estimate(facts, [], hw, Constraints())["weights_mb"]
    packed = estimate(facts, [{"name": "onednn-linear"}], hw, Constraints())["weights_mb"]
    assert packed - plain == pytest.approx(facts["linear_params"] * 4 / 2 ** 20, rel=1e-6)
    q = [{"name": "int8-weight-only"}]
    assert estimate(facts, q + [{"name": "onednn-linear"}], hw, Constraints())["weights_mb"] == pytest.approx(
        estimate(facts, q, hw, Constraints())["weights_mb"])
