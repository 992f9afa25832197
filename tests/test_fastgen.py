"""graph-decode's loop produces exactly generate's greedy tokens (eager here; the CUDA graph path in test_gpu)."""

import contextlib

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tests.conftest import fast_recipe
from workbench.core import pipeline
from workbench.core.optimizations.fastgen import GraphedGreedy


@contextlib.contextmanager
def attention_spy(name: str, spy, original):
    """``spy`` registered as transformers' attention function ``name`` for the block, ``original`` after."""
    from transformers import AttentionInterface

    AttentionInterface.register(name, spy)
    try:
        yield
    finally:
        AttentionInterface.register(name, original)


def varied_llama():
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      initializer_range=0.5)  # large weights: greedy tokens vary from step to step
    return LlamaForCausalLM(cfg).eval()


def test_tokens_equal_generate():
    model = varied_llama()
    ids = torch.randint(0, 512, (3, 12))
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, min_new_tokens=20,
                         do_sample=False, pad_token_id=0)
    assert len(set(ref[0, 12:].tolist())) > 3  # the check is meaningful only if tokens vary
    gen = GraphedGreedy(model, 3, 32, mode="eager")
    steps = []
    out = gen.generate(ids, 20, on_step=lambda: steps.append(1))
    assert torch.equal(out, ref)
    assert len(steps) == 20
    assert torch.equal(gen.generate(ids, 20), ref)  # the static cache is reset between calls


def test_rejects_wrong_shape():
    gen = GraphedGreedy(varied_llama(), 1, 16, mode="eager")
    try:
        gen.generate(torch.zeros(2, 4, dtype=torch.long), 4)
    except ValueError as exc:
        assert "batch 1" in str(exc)
    else:
        raise AssertionError("expected ValueError")


def test_graph_decode_in_pipeline_on_cpu(tiny_llama):
    events = []
    report = pipeline.run(fast_recipe(str(tiny_llama), [("graph-decode", {})]).validate(),
                          lambda type_, **k: events.append((type_, k)))
    assert report["optimization_reports"][0]["mode"] == "eager"
    assert any(t == "log" and "runs eagerly" in k["text"] for t, k in events)
    assert report["optimized"]["decode_ms_per_token"]["count"] >= 2


def test_gemv_forward_matches_linear_for_one_row_and_leaves_batches_alone(tiny_llama):
    import torch

    from workbench.core.optimizations.fastgen import use_gemv
    from workbench.core.models import load

    loaded = load(str(tiny_llama), None, "cpu")
    ids = torch.arange(5, 21)[None]
    with torch.inference_mode():
        ref_prefill = loaded.model(input_ids=ids).logits
        ref_one = loaded.model(input_ids=ids[:, :1]).logits
        n = use_gemv(loaded.model)
        assert n == sum(1 for m in loaded.model.modules() if type(m) is torch.nn.Linear) and n > 0
        lin = loaded.model.model.layers[0].mlp.down_proj
        x = torch.randn(1, 1, lin.in_features)
        assert torch.allclose(lin(x), torch.nn.functional.linear(x, lin.weight), atol=1e-5)
        assert torch.equal(loaded.model(input_ids=ids).logits, ref_prefill)  # many rows: F.linear, unchanged
        assert torch.allclose(loaded.model(input_ids=ids[:, :1]).logits, ref_one, atol=1e-4)


def test_fuse_keeps_tokens_weights_size_and_export(tmp_path):
    """fuse=True: q/k/v and gate/up become one projection each over one weight whose row blocks are the parameters;
    the decode attention is grouped-query against the cache. Tokens, the state dict, the counted size and a
    save/reload are unchanged; the decode attention really runs (one query row, a mask) and agrees with sdpa."""
    from transformers import AutoModelForCausalLM

    import workbench.core.optimizations.fastgen as fastgen
    from workbench.core.measure.memory import model_size_bytes

    model = varied_llama()
    ids = torch.randint(0, 512, (2, 12))
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, min_new_tokens=20,
                         do_sample=False, pad_token_id=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    size = model_size_bytes(model)
    logs = []
    gen = GraphedGreedy(model, 2, 32, mode="eager", fuse=True, log=logs.append)
    assert "'qkv': 2, 'gate_up': 2, 'attention': 2" in logs[0]
    calls = []

    def spy(module, query, key, value, mask, **kw):
        out = fastgen.decode_attention(module, query, key, value, mask, **kw)
        if query.shape[2] == 1:
            from transformers.integrations.sdpa_attention import sdpa_attention_forward

            calls.append((mask.dtype, torch.allclose(out[0], sdpa_attention_forward(module, query, key, value, mask,
                                                                                     **kw)[0], rtol=1e-4, atol=1e-4)))
        return out

    with attention_spy(fastgen.DECODE_ATTENTION, spy, fastgen.decode_attention):
        assert torch.equal(gen.generate(ids, 20), ref)
    assert len(calls) == 19 * 2 and all(dtype == torch.bool and close for dtype, close in calls)
    attn = model.model.layers[0].self_attn
    assert attn.k_proj.weight.untyped_storage().data_ptr() == attn.q_proj.weight.untyped_storage().data_ptr()
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    assert model_size_bytes(model) == size
    assert model.config._attn_implementation == "sdpa"  # only the attention modules' own config copies changed
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert all(torch.equal(again.state_dict()[k], state[k]) for k in state)
    # a Linear called on another input than its group's first computes itself
    x = torch.randn(1, 3, 64)
    k_weight = state["model.layers.0.self_attn.k_proj.weight"]
    assert torch.allclose(attn.k_proj(x), torch.nn.functional.linear(x, k_weight))


def test_fuse_skips_quantized_and_mismatched_layers():
    from workbench.core.optimizations.fastgen import _fuse_group

    a, b = torch.nn.Linear(8, 4), torch.nn.Linear(6, 4)
    assert not _fuse_group([a, b], gemv=False)  # different inputs widths
    q = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(8, 4)), {torch.nn.Linear})
    assert not _fuse_group([q[0], torch.nn.Linear(8, 4)], gemv=False)


def test_cache_argument_follows_the_forward_signature():
    from workbench.core.optimizations.fastgen import cache_argument

    class Old:
        def forward(self, input_ids=None, past_key_values=None, cache_position=None):
            pass

    class New:
        def forward(self, input_ids=None, cache=None, cache_position=None):
            pass

    assert cache_argument(Old()) == "past_key_values"
    assert cache_argument(New()) == "cache"


def test_fused_graph_decode_in_pipeline_exports_plain_weights(tiny_llama, tmp_path):
    """The fusion happens inside the benchmark (the loop is built there); the export afterwards must still be a
    plain transformers folder with the original parameter names, verified by optbench's reload check."""
    from transformers import AutoModelForCausalLM

    report = pipeline.run(fast_recipe(str(tiny_llama), [("graph-decode", {"fuse": True})]).validate(),
                          lambda *a, **k: None, artifact_dir=str(tmp_path / "art"))
    assert report["optimization_reports"][0]["fuse"] is True
    assert report["export"]["verified"]
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "art")
    assert "model.layers.0.self_attn.k_proj.weight" in again.state_dict()


def test_decomposed_verify_attention_agrees_with_sdpa_and_keeps_prompt_lookups_tokens():
    """fuse=true, verify_attention=decomposed: a prompt-lookup verify round's query of K + 1 positions (causal among
    themselves, against the cache) is computed by ``verify_attention`` and agrees with sdpa's; the tokens stay
    greedy decoding's."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    import workbench.core.optimizations.fastgen as fastgen
    from workbench.core.optimizations.spec_lookup import LookupGreedy

    model = varied_llama()
    ids = torch.randint(0, 512, (1, 20))
    ids[0, 10:] = ids[0, :10]  # the prompt repeats itself: lookup drafts from the start
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, min_new_tokens=24,
                         do_sample=False, pad_token_id=0)
    gen = LookupGreedy(model, 1, 64, 4, 2, mode="eager", fuse=True, verify_attention="decomposed")
    assert model.model.layers[0].self_attn.config._attn_implementation == fastgen.VERIFY_ATTENTION
    widths = []

    def spy(module, query, key, value, mask, **kw):
        out = fastgen.verify_attention(module, query, key, value, mask, **kw)
        q_len = query.shape[2]
        if 1 < q_len <= fastgen.VERIFY_MAX:
            want = sdpa_attention_forward(module, query, key, value, mask, **kw)[0]
            widths.append((q_len, mask.dtype, torch.allclose(out[0], want, rtol=1e-4, atol=1e-5)))
        return out

    with attention_spy(fastgen.VERIFY_ATTENTION, spy, fastgen.verify_attention):
        assert torch.equal(gen.generate(ids, 24), ref)
    assert widths and all(q == 5 and close for q, _, close in widths)  # K + 1 positions, every layer agreeing
    assert {dtype for _, dtype, _ in widths} == {torch.bool}


def test_decomposed_verify_attention_needs_fuse(tiny_llama):
    import pytest

    from workbench.core.errors import InputError

    r = fast_recipe(str(tiny_llama), [("graph-decode", {"verify_attention": "decomposed"})])
    with pytest.raises(InputError, match="verify_attention=decomposed.*fuse=true"):
        pipeline.run(r.validate(), lambda *a, **k: None)


def test_verify_attention_with_a_float_mask_and_two_rows_matches_sdpa():
    """verify_attention's additive-mask branch (a float mask of 0 / -inf, batch 2, one row's keys partly masked
    out), grouped heads 4 over 2: the output equals transformers' sdpa path."""
    import types

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from workbench.core.optimizations.fastgen import verify_attention

    torch.manual_seed(0)
    module = types.SimpleNamespace(num_key_value_groups=2, is_causal=True, training=False)
    q, k, v = torch.randn(2, 4, 3, 8), torch.randn(2, 2, 10, 8), torch.randn(2, 2, 10, 8)
    allowed = torch.ones(2, 1, 3, 10, dtype=torch.bool)
    allowed[:, :, :, 7:] = torch.tensor([[True, False, False], [True, True, False], [True, True, True]]).T[None, None]
    allowed[1, :, :, :2] = False  # the second row's first keys are padding
    mask = torch.zeros(2, 1, 3, 10).masked_fill(~allowed, float("-inf"))
    got, _ = verify_attention(module, q, k, v, mask, scaling=8 ** -0.5)
    want, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=8 ** -0.5)
    assert got.shape == want.shape == (2, 3, 4, 8)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_extern_matmul_survives_compile_as_one_opaque_call_and_keeps_tokens():
    """matmul=extern: every Linear (fused q/k/v and gate/up included) computes through optbench::linear, which
    torch.compile keeps as a call (inductor cannot rewrite it as a reduction: no aten.mm / addmm left in the
    graph it is given), with greedy tokens equal to generate's; gemv and extern together are refused."""
    import pytest

    from workbench.core.optimizations.fastgen import extern_linear

    model = varied_llama()
    ids = torch.randint(0, 512, (2, 12))
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, min_new_tokens=16,
                         do_sample=False, pad_token_id=0)
    gen = GraphedGreedy(model, 2, 32, mode="eager", fuse=True, matmul="extern")
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    assert all(getattr(m, "_optbench_extern", False) or "forward" in vars(m) for m in linears)
    calls = []
    op = extern_linear()
    with torch.library._scoped_library("optbench", "IMPL") as lib:
        def counted(x, weight, bias):
            calls.append(tuple(weight.shape))
            return torch.nn.functional.linear(x, weight, bias)

        lib.impl("linear", counted, "CPU")
        assert torch.equal(gen.generate(ids, 16), ref)
    layers = model.config.num_hidden_layers
    assert len(calls) == 16 * (4 * layers + 1)  # fused qkv, o, fused gate/up, down a layer + the head, a forward
    assert (model.config.vocab_size, model.config.hidden_size) in calls

    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    x = torch.randn(1, 1, model.config.hidden_size)
    lin = model.model.layers[0].mlp.down_proj
    torch.compile(lambda t: model.model.layers[0].mlp(t), backend=backend, fullgraph=True)(x)
    assert any("optbench.linear" in t for t in seen) and not any("aten.mm" in t or "addmm" in t for t in seen)
    assert torch.equal(op(torch.ones(1, lin.in_features), lin.weight, None),
                       torch.nn.functional.linear(torch.ones(1, lin.in_features), lin.weight))
    with pytest.raises(ValueError, match="one or the other"):
        GraphedGreedy(varied_llama(), 1, 16, mode="eager", gemv=True, matmul="extern")


def test_extern_matmul_and_gemv_together_are_one_line_input_error(tiny_llama):
    import pytest

    from workbench.core.errors import InputError

    r = fast_recipe(str(tiny_llama), [("graph-decode", {"gemv": True, "matmul": "extern"})])
    with pytest.raises(InputError, match="gemv=true.*matmul=extern"):
        pipeline.run(r.validate(), lambda *a, **k: None)


def test_fusing_a_fused_model_again_keeps_its_weight():
    """A second generator with fuse=true on the same model (a benchmark builds one per variant) must not re-fuse:
    that concatenated the views into a new weight and freed the old one, which the first generator's captured
    CUDA graph still read. The fused weight and the parameters' storage stay the same objects; tokens unchanged."""
    from workbench.core.optimizations.fastgen import fuse_projections

    model = varied_llama()
    ids = torch.randint(0, 512, (1, 12))
    first = GraphedGreedy(model, 1, 32, mode="eager", fuse=True)
    ref = first.generate(ids, 12)
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    held = {name: (getattr(m, "_optbench_fused_weight"), m.weight.data_ptr())
            for name, m in (("qkv", attn.q_proj), ("gate_up", mlp.gate_proj))}
    assert fuse_projections(model, verify="decomposed") == {"qkv": 2, "gate_up": 2, "attention": 0}
    second = GraphedGreedy(model, 1, 32, mode="eager", fuse=True)
    for name, m in (("qkv", attn.q_proj), ("gate_up", mlp.gate_proj)):
        assert m._optbench_fused_weight is held[name][0] and m.weight.data_ptr() == held[name][1]
    assert attn.k_proj.weight.untyped_storage().data_ptr() == held["qkv"][0].untyped_storage().data_ptr()
    assert torch.equal(second.generate(ids, 12), ref) and torch.equal(first.generate(ids, 12), ref)


def test_fusion_and_pdl_switches_reach_inductor_and_keep_tokens(monkeypatch):
    """graph-decode:fusion=combo+aggressive: the step is compiled with inductor's combo kernels and aggressive fusion
    (next to coordinate descent when tuned); pdl=true: with programmatic dependent launch. Compiled on CPU here,
    greedy tokens equal generate's."""
    import pytest

    model = varied_llama()
    ids = torch.randint(0, 512, (1, 12))
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, min_new_tokens=8,
                         do_sample=False, pad_token_id=0)
    seen = []
    real = torch.compile

    def spy(fn, **kw):
        seen.append(kw)
        return real(fn, **kw)

    monkeypatch.setattr(torch, "compile", spy)
    gen = GraphedGreedy(model, 1, 32, mode="graph", tuning="coordinate-descent", fusion="combo+aggressive")
    assert seen[-1]["options"] == {"coordinate_descent_tuning": True, "combo_kernels": True, "aggressive_fusion": True}
    assert torch.equal(gen.generate(ids, 8), ref)  # on CPU: the compiled step, no CUDA graph
    gen = GraphedGreedy(model, 1, 32, mode="graph", pdl=True)
    assert seen[-1]["options"] == {"triton.enable_pdl": True}  # generated only for CUDA kernels on Hopper+
    assert torch.equal(gen.generate(ids, 8), ref)
    GraphedGreedy(model, 1, 32, mode="graph")
    assert "options" not in seen[-1] and seen[-1]["mode"] == "default"  # plain: compile's own default mode
    with pytest.raises(ValueError, match="fusion must be one of"):
        GraphedGreedy(model, 1, 32, mode="graph", fusion="everything")
