"""An int8 speculative draft (speculative:draft_dtype=int8) and the model's own weights as a draft (draft=self):
the int8 Linear computes what the float one does within its rounding, the output stays the model's own greedy
tokens, the model itself is left as it was, and what cannot work is refused in one line before anything is
built. CPU (the int8 draft is a CPU path)."""

import pytest

import torch  # a pinned dependency: a broken install must fail, not skip

from tests.test_opt_speculative import greedy, speculative
from workbench.core import optimizations
from workbench.core.errors import InputError
from workbench.core.models import load
from workbench.core.optimizations import _draft_int8
from workbench.core.optimizations.context import ApplyContext


@pytest.mark.parametrize("bias", [False, True])
def test_an_int8_linear_computes_the_float_one_within_its_rounding(bias):
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 160, bias=bias)
    q = _draft_int8.int8_linear(lin)
    assert q.qweight.dtype == torch.int8 and q.qweight.shape == (160, 96) and q.scales.shape == (160,)
    for shape in ((1, 96), (2, 5, 96)):  # one decode row, and a batch of verify positions
        x = torch.randn(*shape)
        with torch.no_grad():
            want, got = lin(x), q(x)
        assert got.shape == want.shape and got.dtype == torch.float32
        # int8 rows (max-abs scale) and the input rounded to bf16: ~1 % of the output's size, far below 5 %
        rel = float((got - want).norm() / want.norm())
        assert rel < 0.05, rel
    # the rounding is real: an int8 weight is not the float weight
    assert not torch.equal(q.qweight.float() * q.scales.float()[:, None], lin.weight.detach())


def test_self_draft_in_int8_keeps_the_models_tokens_and_leaves_the_model_alone(tiny_llama):
    loaded = load(str(tiny_llama), None, "cpu")
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    linears = sum(type(m) is torch.nn.Linear for m in loaded.model.modules())
    rep, gen = speculative(loaded, method="draft", draft="self", draft_dtype="int8", num_tokens=3, confidence=0.0)
    assert rep["draft"] == "self" and rep["draft_dtype"].startswith(f"int8 weights ({linears} Linear layers)")
    assert rep["greedy_check"]["identical"] is True
    draft = gen.draft
    assert draft is not loaded.model
    assert draft.get_input_embeddings() is loaded.model.get_input_embeddings()  # shared, not copied
    assert not any(type(m) is torch.nn.Linear for m in draft.modules())  # every Linear (the head too) is int8
    # one byte a weight: the int8 rows hold exactly the model's Linear weights (its tied head included)
    int8_bytes = sum(m.qweight.numel() for m in draft.modules() if hasattr(m, "qweight"))
    assert int8_bytes == sum(m.weight.numel() for m in loaded.model.modules() if type(m) is torch.nn.Linear)
    ids = torch.tensor([[101, 7592, 2088, 2003, 1037, 11, 523]])
    out = gen.generate(ids, 20)
    assert torch.equal(out, greedy(loaded.model, ids, 20))
    s = rep["stats"]
    assert s["tokens"] == 20 and s["accepted"] == s["tokens"] - s["target_forwards"] <= s["proposed"]
    # the model: the same modules and the same weights
    assert sum(type(m) is torch.nn.Linear for m in loaded.model.modules()) == linears
    after = loaded.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_layers_student_in_int8_keeps_the_models_tokens(tiny_llama):
    loaded = load(str(tiny_llama), None, "cpu")
    rep, gen = speculative(loaded, method="draft", draft_layers=1, draft_dtype="int8", confidence=0.0)
    assert rep["draft"] == "layers" and rep["draft_dtype"].startswith("int8 weights")
    assert rep["greedy_check"]["identical"] is True
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 1997]])
    assert torch.equal(gen.generate(ids, 16), greedy(loaded.model, ids, 16))


def test_an_int8_draft_inside_graph_decodes_loop_keeps_the_models_tokens(tiny_llama):
    loaded = load(str(tiny_llama), None, "cpu")
    ctx = ApplyContext("cpu", loaded.task, loaded.tokenizer)
    ctx.extra["generate_kwargs"] = gk = {}
    spec, graph = optimizations.get("speculative"), optimizations.get("graph-decode")
    rep = spec.apply(loaded.model, spec.resolve({"draft": "self", "draft_dtype": "int8", "num_tokens": 3,
                                                 "gate": "off"}), ctx).report
    graph.apply(loaded.model, graph.resolve({}), ctx)
    gen = gk["optbench_generator"](1, 64)
    ids = torch.tensor([[101, 7592, 2088, 2003, 1037]])
    assert torch.equal(gen.generate(ids, 24), greedy(loaded.model, ids, 24))
    assert rep["stats"]["tokens"] >= 24


def test_what_cannot_work_is_refused_in_one_line(tiny_llama):
    loaded = load(str(tiny_llama), None, "cpu")
    with pytest.raises(InputError, match=r"^speculative:draft=self,draft_dtype=auto: .*expected draft_dtype=int8"):
        speculative(loaded, draft="self")
    with pytest.raises(InputError, match=r"^speculative:method=prompt-lookup,draft_dtype=int8: .*expected "
                                         r"method=draft"):
        speculative(loaded, method="prompt-lookup", draft_dtype="int8")
    spec = optimizations.get("speculative")
    ctx = ApplyContext("cuda", loaded.task, loaded.tokenizer)  # refused before anything touches the device
    ctx.extra["generate_kwargs"] = {}
    with pytest.raises(InputError, match=r"^speculative:draft_dtype=int8: an int8 draft is a CPU path"):
        spec.apply(loaded.model, spec.resolve({"draft": "self", "draft_dtype": "int8"}), ctx)
    with pytest.raises(InputError, match="draft_dtype"):
        spec.resolve({"draft_dtype": "int4"})


def test_a_compiled_int8_draft_step_keeps_the_models_tokens(tiny_llama):
    """draft_compile=true: the draft's one-token step through inductor on this CPU (one graph, compiled once for
    the one-token shape; the folded two-position step stays eager), and the output is still the model's own."""
    import torch._dynamo

    from workbench.core.optimizations.spec_draft import DraftGreedy
    from workbench.core.optimizations.speculative import _Stats

    loaded = load(str(tiny_llama), None, "cpu")
    draft = _draft_int8.self_draft(loaded.model)
    _draft_int8.quantize_draft(draft)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    stats = _Stats()
    gen = DraftGreedy(loaded.model, draft, 1, 96, 4, stats=stats, mode="eager", draft_compile=True)
    assert gen.drafter._step is not gen.drafter._decode_step
    ids = torch.tensor([[101, 7592, 2088, 2003, 1037, 11, 523]])
    for n in (30, 12):
        assert torch.equal(gen.generate(ids, n), greedy(loaded.model, ids, n))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # one shape, no recompiles
    assert stats.live["accepted"] > 0
