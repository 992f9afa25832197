"""graph-decode's loop produces exactly generate's greedy tokens (eager here; the CUDA graph path in test_gpu)."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tests.conftest import fast_recipe
from workbench.core import pipeline
from workbench.core.fastgen import GraphedGreedy


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

    from workbench.core.fastgen import use_gemv
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
