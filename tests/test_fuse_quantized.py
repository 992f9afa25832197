"""graph-decode's fuse=true on torchao-quantized weights: q/k/v and gate/up become one quantized matrix each, whose
row slices are the projections' weights (one copy). Logits, greedy tokens, the state dict, the bytes held and the
export are those of the unfused quantized model; per-tensor scales, mismatched attributes and mixed types are left
unfused. The CUDA-only tile-packed int4 (tinygemm) and fp8-dynamic are covered by the gpu-marked tests."""

import gc
import weakref

import pytest

import torch
import torchao  # noqa: F401  (pinned dependency)

from tests.test_opt_quantization import apply
from workbench.core.measure.memory import model_size_bytes
from workbench.core.models import load
from workbench.core.optimizations.fastgen import GraphedGreedy, _fuse_group, fuse_projections, plain_forward

@pytest.fixture(autouse=True)
def _cuda_fusion_opt_in(monkeypatch):
    """Quantized fusion on CUDA is opt-in until a GPU has run these tests (fastgen.QUANTIZED_CUDA_FLAG)."""
    from workbench.core.optimizations.fastgen import QUANTIZED_CUDA_FLAG

    monkeypatch.setenv(QUANTIZED_CUDA_FLAG, "1")


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (int4 tinygemm / float8 kernels); "
                                                                "run on the GPU machine with pytest -m gpu")
CPU_KINDS = [("int4-weight-only", {"group_size": 32}, "IntxUnpackedToInt8Tensor"),
             ("int8-weight-only", {}, "Int8Tensor"),
             ("fp8-weight-only", {}, "Float8Tensor"),
             ("int8-dynamic-act", {}, "Int8Tensor")]
LAYERS = 2


def build_varied_llama(out, hidden=128, heads=4, inter=256):
    """tests.fixtures.tiny.build_llama with large initial weights, so that greedy tokens vary from step to step."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.fixtures.tiny import VOCAB, demo_tokenizer

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=LAYERS,
                      num_attention_heads=heads, num_key_value_heads=heads // 2, max_position_embeddings=1024,
                      tie_word_embeddings=True, pad_token_id=0, bos_token_id=101, eos_token_id=102,
                      initializer_range=0.3)
    LlamaForCausalLM(cfg).save_pretrained(out)
    demo_tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def llama128(tmp_path_factory):
    return build_varied_llama(tmp_path_factory.mktemp("fuseq") / "llama")


def inner(t):
    """The plain tensors inside a (possibly torchao) tensor."""
    if type(t) in (torch.Tensor, torch.nn.Parameter) or not hasattr(t, "__tensor_flatten__"):
        return [t]
    return [x for n in t.__tensor_flatten__()[0] for x in inner(getattr(t, n))]


def held_bytes(modules) -> int:
    """Bytes of every distinct storage reachable from the modules' parameters, buffers and fused weights."""
    seen, total = set(), 0
    for mod in modules:
        for t in [*mod.parameters(recurse=False), *mod.buffers(recurse=False), vars(mod).get("_optbench_fused_weight")]:
            for x in inner(t) if t is not None else []:
                s = x.untyped_storage()
                if s.data_ptr() not in seen:
                    seen.add(s.data_ptr())
                    total += s.nbytes()
    return total


def values(model) -> dict:
    return {k: v.dequantize() if type(v) is not torch.Tensor else v.clone() for k, v in model.state_dict().items()}


def quantized(path, name, params, device="cpu"):
    loaded = load(str(path), None, device)
    apply(loaded, name, device=device, **params)
    return loaded


@pytest.mark.parametrize("name,params,kind", CPU_KINDS, ids=[k[0] for k in CPU_KINDS])
def test_quantized_projections_fuse_into_one_copy(llama128, name, params, kind):
    loaded = quantized(llama128, name, params)
    model = loaded.model
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert type(attn.k_proj.weight).__name__ == kind
    ids = torch.arange(5, 29)[None]
    with torch.inference_mode():
        ref = model(input_ids=ids).logits
    before = values(model)
    size, held = model_size_bytes(model), held_bytes(model.modules())
    layers_held = held_bytes(model.model.layers.modules())
    original = weakref.ref(inner(attn.k_proj.weight)[0])

    done = fuse_projections(model)
    assert done["qkv"] == LAYERS and done["gate_up"] == LAYERS
    fused = attn.q_proj._optbench_fused_weight
    assert type(attn.k_proj.weight).__name__ == kind and type(fused).__name__ == kind
    assert fused.shape == (attn.q_proj.out_features + attn.k_proj.out_features + attn.v_proj.out_features,
                           attn.q_proj.in_features)
    # the projections' data are row slices of the fused tensor's: one storage
    assert inner(attn.v_proj.weight)[0].untyped_storage().data_ptr() == inner(fused)[0].untyped_storage().data_ptr()
    assert inner(mlp.up_proj.weight)[0].untyped_storage().data_ptr() == \
        inner(mlp.gate_proj._optbench_fused_weight)[0].untyped_storage().data_ptr()
    gc.collect()
    assert original() is None  # the unfused copy is gone

    with torch.inference_mode():
        got = model(input_ids=ids).logits
        with plain_forward(model) as swapped:
            plain = model(input_ids=ids).logits
    assert swapped
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain, ref, rtol=0, atol=0)
    after = values(model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert model_size_bytes(model) == size
    assert held_bytes(model.modules()) <= 1.01 * held
    assert held_bytes(model.model.layers.modules()) <= 1.01 * layers_held  # the projections alone, no embeddings
    # a part called on another input than its group's first computes itself
    x = torch.randn(1, 3, attn.k_proj.in_features)
    with torch.inference_mode():
        torch.testing.assert_close(attn.k_proj(x), torch.nn.functional.linear(x, attn.k_proj.weight))


@pytest.mark.parametrize("name,params,kind", CPU_KINDS, ids=[k[0] for k in CPU_KINDS])
def test_fused_quantized_greedy_tokens_equal_generate(llama128, name, params, kind):
    model = quantized(llama128, name, params).model
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 1997, 1996, 3733]])
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, min_new_tokens=8,
                         do_sample=False, pad_token_id=0)
    assert len(set(ref[0, ids.shape[1]:].tolist())) > 2  # the check is meaningful only if tokens vary
    logs = []
    gen = GraphedGreedy(model, batch=1, max_len=24, mode="eager", fuse=True, log=logs.append)
    assert f"'qkv': {LAYERS}, 'gate_up': {LAYERS}" in logs[0]
    assert torch.equal(gen.generate(ids, 8), ref)


@pytest.mark.parametrize("name,params", [("int4-weight-only", {"group_size": 32}), ("int8-dynamic-act", {})])
def test_fused_quantized_export_reloads_the_same_weights(llama128, tmp_path, name, params):
    from transformers import AutoModelForCausalLM

    from workbench.core import export

    loaded = quantized(llama128, name, params)
    before = values(loaded.model)
    assert fuse_projections(loaded.model)["qkv"] == LAYERS
    check = export.save(loaded.model, loaded.tokenizer, "causal-lm", tmp_path / "art", {}, [], "cpu")
    assert check["verified"] and check["fused_runtime_max_rel_error"] < 1e-5
    again = values(AutoModelForCausalLM.from_pretrained(tmp_path / "art"))
    assert again.keys() == before.keys() and all(torch.equal(again[k], before[k]) for k in before)


def linears(n_out=(48, 16, 16), k=64):
    torch.manual_seed(0)
    return [torch.nn.Linear(k, n, bias=False) for n in n_out]


def quantize_each(mods, make):
    for m in mods:
        m.weight = torch.nn.Parameter(make(m.weight.data), requires_grad=False)
    return mods


def test_per_tensor_scales_mismatched_attributes_and_mixed_types_are_not_fused():
    from torchao.quantization import Float8Tensor, Int8Tensor, IntxUnpackedToInt8Tensor
    from torchao.quantization.granularity import PerRow, PerTensor
    from torchao.quantization.quantize_.workflows.int8.int8_tensor import QuantizeTensorToInt8Kwargs

    def unfused(mods):
        weights = [m.weight for m in mods]
        assert not _fuse_group(mods, gemv=False)
        assert all(m.weight is w and "forward" not in vars(m) for m, w in zip(mods, weights))  # left untouched

    # per-tensor fp8: every part has its own scale (and block size), which no concatenation can keep
    unfused(quantize_each(linears(), lambda w: Float8Tensor.from_hp(w, granularity=PerTensor())))
    per_tensor = quantize_each(linears(), lambda w: Float8Tensor.from_hp(w, granularity=PerTensor()))
    assert per_tensor[0].weight.scale.numel() == 1
    unfused(quantize_each(linears(), lambda w: Int8Tensor.from_hp(w, PerTensor())))
    # activation quantization on one part only
    mods = quantize_each(linears(), lambda w: Int8Tensor.from_hp(w, PerRow()))
    mods[1].weight = torch.nn.Parameter(Int8Tensor.from_hp(mods[1].weight.dequantize(), PerRow(),
                                                           act_quant_kwargs=QuantizeTensorToInt8Kwargs(PerRow())),
                                        requires_grad=False)
    unfused(mods)
    # different group sizes
    mods = quantize_each(linears(), lambda w: IntxUnpackedToInt8Tensor.from_hp(w, (1, 32), torch.int4))
    mods[2].weight = torch.nn.Parameter(IntxUnpackedToInt8Tensor.from_hp(mods[2].weight.dequantize(), (1, 16),
                                                                         torch.int4), requires_grad=False)
    unfused(mods)
    # mixed types, and quantized beside plain
    mods = quantize_each(linears(), lambda w: Int8Tensor.from_hp(w, PerRow()))
    mods[1].weight = torch.nn.Parameter(Float8Tensor.from_hp(mods[1].weight.dequantize(), granularity=PerRow()),
                                        requires_grad=False)
    unfused(mods)
    mods = linears()
    quantize_each(mods[:2], lambda w: Int8Tensor.from_hp(w, PerRow()))
    unfused(mods)
    # input-side pre-scales (AWQ/SmoothQuant style) fuse only when every part has the same one
    scale = torch.rand(64) + 0.5
    unfused(quantize_each(linears(), lambda w: Int8Tensor.from_hp(w, PerRow(), act_pre_scale=torch.rand(64) + 0.5)))
    mods = quantize_each(linears(), lambda w: Int8Tensor.from_hp(w, PerRow(), act_pre_scale=scale.clone()))
    x = torch.randn(2, 64)
    ref = [m(x) for m in mods]
    assert _fuse_group(mods, gemv=False)
    got = [m(x) for m in mods]
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
    # per-row fp8 built the same way does fuse
    mods = quantize_each(linears(), lambda w: Float8Tensor.from_hp(w, granularity=PerRow()))
    ref = [m(x) for m in mods]
    assert _fuse_group(mods, gemv=False)
    for m, r in zip(mods, ref):
        torch.testing.assert_close(m(x), r, rtol=1e-5, atol=1e-5)


def test_quantized_groups_ignore_the_gemv_rewrite(llama128):
    """gemv=True rewrites plain weights only: a quantized fused group keeps torchao's matmul for one row too."""
    model = quantized(llama128, "int8-weight-only", {}).model
    ids = torch.tensor([[101, 2023, 2003, 1037]])
    with torch.inference_mode():
        ref_one = model(input_ids=ids[:, :1]).logits
        assert fuse_projections(model, gemv=True)["qkv"] == LAYERS
        torch.testing.assert_close(model(input_ids=ids[:, :1]).logits, ref_one, rtol=1e-5, atol=1e-5)


def test_a_part_with_strided_scales_computes_and_saves_through_a_contiguous_copy(monkeypatch):
    """What tile-packed int4 (CUDA) does, on CPU: a part whose scales are a strided slice of the fused tensor's
    (tinygemm keeps them as [groups, rows, 2]) computes through a transient contiguous copy on another input and
    under plain_forward, and its state_dict entry is contiguous with the same values."""
    from torchao.quantization import IntxUnpackedToInt8Tensor

    from workbench.core.optimizations import fastgen

    mods = quantize_each(linears(), lambda w: IntxUnpackedToInt8Tensor.from_hp(w, (1, 16), torch.int4))
    x = torch.randn(2, 64)
    ref = [m(x) for m in mods]
    before = [m.weight.dequantize() for m in mods]
    assert _fuse_group(mods, gemv=False)
    by_group = mods[0]._optbench_fused_weight.scale.t().contiguous()  # [groups, rows], as tinygemm lays them out
    start = 0
    for m in mods:
        names, attrs = m.weight.__tensor_flatten__()
        data = {k: getattr(m.weight, k) for k in names} | {"scale": by_group.t()[start:start + m.out_features]}
        fastgen._set_part(m, fastgen._rebuild(type(m.weight), data, attrs, m.weight.shape))
        start += m.out_features
    assert all(m._optbench_standalone and not m.weight.scale.is_contiguous() for m in mods)
    copies = []
    real = fastgen._standalone
    monkeypatch.setattr(fastgen, "_standalone", lambda w: copies.append(w) or real(w))
    group = torch.nn.ModuleList(mods)
    state = group.state_dict()
    assert len(copies) == 3 and all(t.is_contiguous() for v in state.values() for t in inner(v))
    assert all(torch.equal(state[f"{i}.weight"].dequantize(), b) for i, b in enumerate(before))
    assert all(torch.equal(m.weight.dequantize(), b) for m, b in zip(mods, before))
    with plain_forward(group):
        for m, r in zip(mods, ref):
            torch.testing.assert_close(m(x), r, rtol=1e-5, atol=1e-5)
    assert len(copies) == 6
    torch.testing.assert_close(mods[1](x.clone()), ref[1], rtol=1e-5, atol=1e-5)  # not the group's input
    assert len(copies) == 7


def cuda_held(model) -> int:
    gc.collect()
    torch.cuda.synchronize()
    return held_bytes(model.modules())


@pytest.mark.gpu
@CUDA
def test_tile_packed_int4_fuses_on_cuda(tmp_path):
    """Int4TilePackedTo4dTensor: packed rows (n-tiles of 8) concatenate along dim 0, scales along dim 1; a part's
    scale slice is strided, so it computes and is saved through a transient contiguous copy (one copy kept)."""
    from transformers import AutoModelForCausalLM

    from workbench.core import export

    path = build_varied_llama(tmp_path / "llama", hidden=1024, heads=8, inter=2048)
    loaded = quantized(path, "int4-weight-only", {"group_size": 64}, device="cuda")
    model = loaded.model
    attn = model.model.layers[0].self_attn
    assert type(attn.k_proj.weight).__name__ == "Int4TilePackedTo4dTensor"
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 1997, 1996, 3733]], device="cuda")
    with torch.inference_mode():
        ref_logits = model(input_ids=ids).logits
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, min_new_tokens=8,
                         do_sample=False, pad_token_id=0)
    before = {k: [x.clone() for x in inner(v)] for k, v in model.state_dict().items()}
    size, held = model_size_bytes(model), cuda_held(model)
    allocated = torch.cuda.memory_allocated()
    x = torch.randn(1, 3, attn.k_proj.in_features, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        k_ref = attn.k_proj(x)

    logs = []
    gen = GraphedGreedy(model, batch=1, max_len=24, mode="eager", fuse=True, log=logs.append)
    assert f"'qkv': {LAYERS}, 'gate_up': {LAYERS}" in logs[0]
    assert attn.k_proj._optbench_standalone and not attn.k_proj.weight.scale_and_zero.is_contiguous()
    assert attn.k_proj.weight.qdata.untyped_storage().data_ptr() == \
        attn.q_proj._optbench_fused_weight.qdata.untyped_storage().data_ptr()
    assert model_size_bytes(model) == size
    assert cuda_held(model) <= 1.01 * held
    assert torch.cuda.memory_allocated() <= allocated + 0.01 * held
    with torch.inference_mode():
        torch.testing.assert_close(model(input_ids=ids).logits, ref_logits, rtol=2e-2, atol=2e-2)
        with plain_forward(model):
            torch.testing.assert_close(model(input_ids=ids).logits, ref_logits, rtol=0, atol=0)
        assert torch.equal(attn.k_proj(x), k_ref)  # another input: the part computes itself
    assert torch.equal(gen.generate(ids, 8), ref)
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(len(inner(after[k])) == len(before[k]) and all(torch.equal(a, b) for a, b in zip(inner(after[k]),
                                                                                                before[k]))
               for k in before)
    assert all(t.is_contiguous() for v in after.values() for t in inner(v))  # what safetensors gets
    graphed = GraphedGreedy(model, batch=1, max_len=24, mode="graph")  # the compiled step over the fused tensors
    assert torch.equal(graphed.generate(ids, 8), ref)
    check = export.save(model, loaded.tokenizer, "causal-lm", tmp_path / "art", {}, [], "cuda")
    assert check["verified"]
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "art", device_map="cuda").state_dict()
    assert all(torch.equal(a, b) for a, b in zip(inner(again["model.layers.0.self_attn.k_proj.weight"]),
                                                 before["model.layers.0.self_attn.k_proj.weight"]))


@pytest.mark.gpu
@CUDA
def test_tile_packed_int4_rows_not_whole_tiles_are_not_fused():
    from torchao.quantization import Int4TilePackedTo4dTensor

    mods = [m.cuda().bfloat16() for m in linears((1024, 12, 12), k=1024)]
    quantize_each(mods, lambda w: Int4TilePackedTo4dTensor.from_hp(w, [1, 64]))
    assert not _fuse_group(mods, gemv=False)
    mods = [m.cuda().bfloat16() for m in linears((1024, 16, 16), k=1024)]
    quantize_each(mods, lambda w: Int4TilePackedTo4dTensor.from_hp(w, [1, 64]))
    x = torch.randn(3, 1024, device="cuda", dtype=torch.bfloat16)
    ref = [m(x) for m in mods]
    assert _fuse_group(mods, gemv=False)
    for m, r in zip(mods, ref):
        assert torch.equal(m(x), r)


@pytest.mark.gpu
@CUDA
def test_fp8_dynamic_rowwise_fuses_and_tensorwise_does_not(tmp_path):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 matmuls need compute capability >= 8.9")
    path = build_varied_llama(tmp_path / "llama", hidden=256, inter=512)
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 1997, 1996, 3733]], device="cuda")
    for granularity, fuses in (("row", True), ("tensor", False)):
        model = quantized(path, "fp8-dynamic", {"granularity": granularity}, device="cuda").model
        with torch.inference_mode():
            ref = model(input_ids=ids).logits
        size = cuda_held(model)
        done = fuse_projections(model)
        assert (done["qkv"], done["gate_up"]) == ((LAYERS, LAYERS) if fuses else (0, 0))
        assert cuda_held(model) <= 1.01 * size
        with torch.inference_mode():
            torch.testing.assert_close(model(input_ids=ids).logits, ref, rtol=2e-2, atol=2e-2)
