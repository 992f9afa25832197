"""Structured pruning (heads, FFN neurons) physically shrinks matrices; importance picks the right units; exports
reload equal (Llama: plain transformers; BERT heads: optbench-resized)."""

import pytest

import torch  # a pinned dependency: a broken install must fail, not skip

from workbench.core import optimizations  # noqa: E402
from workbench.core.export import load_artifact, save  # noqa: E402
from workbench.core.models import load  # noqa: E402
from workbench.core.optimizations.context import ApplyContext  # noqa: E402


def apply(loaded, name, **params):
    spec = optimizations.get(name)
    ctx = ApplyContext("cpu", loaded.task, loaded.tokenizer)
    rep = spec.apply(loaded.model, spec.resolve(params), ctx).report
    return {"name": name, "exportable": spec.exportable, **rep}


@pytest.fixture(scope="module")
def gqa_llama(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.fixtures.tiny import demo_tokenizer

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("gqa") / "llama"
    cfg = LlamaConfig(vocab_size=30522, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, pad_token_id=0, bos_token_id=101, eos_token_id=102)
    LlamaForCausalLM(cfg).save_pretrained(out)
    demo_tokenizer().save_pretrained(out)
    return out


def test_llama_heads_removed_config_updated_export_reloads(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    loaded = load(str(tiny_llama), None, "cpu")
    rep = apply(loaded, "prune-heads", fraction=0.5)
    attn = loaded.model.model.layers[1].self_attn
    assert rep["heads_before"] == 4 and rep["heads_after"] == 2
    assert attn.q_proj.weight.shape == (2 * 16, 64) and attn.o_proj.weight.shape == (64, 2 * 16)
    assert loaded.model.config.num_attention_heads == 2 and loaded.model.config.head_dim == 16
    assert rep["params_removed"] == 2 * 4 * 64 * 32
    rec = save(loaded.model, loaded.tokenizer, "causal-lm", tmp_path / "art", {}, [rep], "cpu")
    assert rec["verified"] and rec["format"] == "transformers"
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "art")
    ids = torch.arange(4, 30)[None]
    with torch.inference_mode():
        assert torch.allclose(plain(input_ids=ids).logits, loaded.model(input_ids=ids).logits, atol=1e-5)
        assert plain.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3


def test_gqa_prunes_whole_kv_groups(gqa_llama):
    loaded = load(str(gqa_llama), None, "cpu")
    rep = apply(loaded, "prune-heads", fraction=0.5)
    attn = loaded.model.model.layers[0].self_attn
    assert rep["kv_heads_after"] == 1 and rep["heads_after"] == 2
    assert attn.k_proj.weight.shape[0] == 16 and attn.q_proj.weight.shape[0] == 32
    with torch.inference_mode():
        assert torch.isfinite(loaded.model(input_ids=torch.arange(4, 20)[None]).logits).all()


def test_magnitude_and_gradient_importance_pick_the_dead_head(tiny_llama):
    for importance in ("magnitude", "gradient", "activation"):
        loaded = load(str(tiny_llama), None, "cpu")
        o = loaded.model.model.layers[0].self_attn.o_proj
        with torch.no_grad():
            o.weight[:, 2 * 16:3 * 16] *= 1e-4  # head 2 of layer 0 barely contributes
        rep = apply(loaded, "prune-heads", fraction=0.25, importance=importance, calib_batches=2)
        assert rep["removed_heads"]["0"] == [2], importance


def test_bert_heads_export_in_resized_format(tiny_bert, tmp_path):
    loaded = load(str(tiny_bert), None, "cpu")
    rep = apply(loaded, "prune-heads", fraction=0.5, importance="gradient", calib_batches=2)
    assert rep["exportable"] == "custom" and rep["export_format"] == "optbench-resized"
    assert loaded.model.encoder.layer[0].attention.self.query.weight.shape == (32, 64)
    rec = save(loaded.model, loaded.tokenizer, "encoder", tmp_path / "art", {}, [rep], "cpu")
    assert rec["verified"] and rec["format"] == "optbench-resized"
    model, _, _ = load_artifact(tmp_path / "art")
    assert model.encoder.layer[1].attention.self.value.weight.shape == (32, 64)


def test_ffn_neurons_removed_and_combined_with_int8_export(tiny_bert, tmp_path):
    loaded = load(str(tiny_bert), None, "cpu")
    reps = [apply(loaded, "prune-ffn", fraction=0.25), apply(loaded, "prune-heads", fraction=0.5)]
    assert loaded.model.config.intermediate_size == 96
    assert loaded.model.encoder.layer[0].output.dense.weight.shape == (64, 96)
    reps.append(apply(loaded, "int8-dynamic"))
    rec = save(loaded.model, loaded.tokenizer, "encoder", tmp_path / "art", {}, reps, "cpu")
    assert rec["verified"] and rec["format"] == "optbench-int8-dynamic"


def test_unstructured_vs_structured_parameter_counts(tiny_llama):
    from workbench.core.measure.memory import param_count

    loaded = load(str(tiny_llama), None, "cpu")
    n0 = param_count(loaded.model)
    apply(loaded, "prune-l1", sparsity=0.5)
    assert param_count(loaded.model) == n0  # zeros, same shapes: nothing for a dense kernel to skip
    apply(loaded, "prune-ffn", fraction=0.5)
    assert param_count(loaded.model) == n0 - 2 * 3 * 64 * 64
