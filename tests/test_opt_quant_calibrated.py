"""Calibrated quantization (int4-weight-only:algorithm=hqq|awq|gptq, int8-smoothquant): the algorithms beat round
to nearest on the error they minimise, scale folding is exact, the tensors are what the kernels read, and the
results export and reload. CPU here; the tinygemm packing on CUDA under ``-m gpu``."""

import json

import pytest

import torch

from tests.conftest import fast_recipe
from workbench.core import optimizations, pipeline
from workbench.core.errors import InputError
from workbench.core.models import load
from workbench.core.optimizations import quant_calibrate as qc
from workbench.core.optimizations.calibration import token_batches
from workbench.core.optimizations.context import ApplyContext

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (tinygemm int4 packing)")


def apply(loaded, name, device="cpu", **params):
    spec = optimizations.get(name)
    ctx = ApplyContext(device, loaded.task, loaded.tokenizer)
    return spec.apply(loaded.model, spec.resolve(params), ctx).report


def correlated_inputs(n: int, k: int, seed: int, draw: int = 0):
    """Activations with correlated channels and a few outlier channels, as a transformer's are (``draw``: new
    samples of the same distribution)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k ** 0.5 + torch.eye(k)
    x = torch.randn(n, k, generator=torch.Generator().manual_seed(1000 * (draw + 1) + seed)) @ mix
    x[:, :4] *= 8.0
    return x


@pytest.mark.parametrize("kind", ["sym", "asym", "asymi"])
def test_gptq_has_lower_output_error_than_round_to_nearest_on_held_out_inputs(kind):
    grid = qc.Grid(kind, 32)
    w = torch.randn(96, 128, generator=torch.Generator().manual_seed(0))
    calib, held = correlated_inputs(1024, 128, 1), correlated_inputs(512, 128, 1, draw=1)
    rtn = qc.rtn(w, grid)
    for act_order in (False, True):
        q = qc.gptq(w, calib.t() @ calib, grid, act_order=act_order)
        assert qc.output_error(held, w, q.dequantize()) < 0.8 * qc.output_error(held, w, rtn.dequantize())
    # every code is on the grid and every group's values are what the scales say
    lo, hi = (0, 15) if kind == "asym" else (-8, 7)
    if kind == "asymi":
        assert q.zero.min() >= -8 and q.zero.max() <= 7 and torch.equal(q.zero, q.zero.round())
    assert q.codes.min() >= lo and q.codes.max() <= hi and torch.equal(q.codes, q.codes.round())


def test_awq_search_never_loses_to_round_to_nearest_and_helps_with_outlier_channels():
    grid = qc.Grid("sym", 32)
    x = correlated_inputs(1024, 128, 2)
    weights = [torch.randn(64, 128, generator=torch.Generator().manual_seed(i)) for i in (3, 4)]
    s, a, loss, rtn_loss = qc.awq_search(x, weights, grid)
    assert a > 0 and loss < 0.9 * rtn_loss  # the outlier channels make a non-zero exponent pay
    # the loss it reports is the output error of the scaled-and-quantized weights it would store
    got = torch.cat([x @ (qc.rtn(w * s, grid).dequantize() / s).t() for w in weights], dim=1)
    ref = torch.cat([x @ w.t() for w in weights], dim=1)
    assert float(((got - ref) ** 2).mean()) == pytest.approx(loss, rel=1e-4)


def test_clip_search_lowers_the_error_of_heavy_tailed_weights_on_held_out_inputs():
    grid = qc.Grid("sym", 32)
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(11)) ** 3  # heavy tails: a few large weights
    # stretch each group's range
    calib, held = correlated_inputs(1024, 128, 4), correlated_inputs(512, 128, 4, draw=1)
    bounds = qc.clip_search(calib, w, grid)
    assert bounds.shape == (64, 4, 1) and (bounds <= w.abs().view(64, 4, 32).amax(-1, keepdim=True) + 1e-6).all()
    lin = torch.nn.Linear(128, 64, bias=False)
    lin.weight.data.copy_(w)
    qc.apply_clip(lin, bounds)
    clipped = qc.rtn(lin.weight, grid).dequantize()
    assert qc.output_error(held, w, clipped) < qc.output_error(held, w, qc.rtn(w, grid).dequantize())


def test_sym_tensor_dequantizes_to_exactly_the_chosen_grid_values():
    from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import IntxUnpackedToInt8Tensor

    w = torch.randn(48, 128, generator=torch.Generator().manual_seed(7))
    q = qc.rtn(w, qc.Grid("sym", 64))
    t = qc.to_torchao(q, torch.float32)
    assert isinstance(t, IntxUnpackedToInt8Tensor)
    torch.testing.assert_close(t.dequantize(), q.dequantize(), rtol=0, atol=1e-6)
    # and torchao's own round-to-nearest picks the same codes (the CPU rtn path and ours agree)
    theirs = IntxUnpackedToInt8Tensor.from_hp(w, (1, 64), torch.int4)
    assert (theirs.qdata.float() - q.codes).abs().max() <= 1  # ties may round apart


def test_asymmetric_cpu_grid_is_torchaos_and_beats_symmetric_on_skewed_groups():
    """The CPU's asymmetric grid (integer zero point, range holding 0) is exactly what torchao's own ASYMMETRIC
    round to nearest stores, its tensor dequantizes to our values, and on groups that are not centred on 0 it
    has a lower error than the symmetric grid (demo:smollm2 g64 RTN: +29.8 % perplexity against +39.7 %)."""
    from torchao.quantization.quant_primitives import MappingType
    from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import IntxUnpackedToInt8Tensor

    gen = torch.Generator().manual_seed(5)
    w = torch.randn(48, 128, generator=gen) + torch.randn(48, 1, generator=gen)  # rows offset from 0
    q = qc.rtn(w, qc.Grid("asymi", 64))
    t = qc.to_torchao(q, torch.float32)
    assert isinstance(t, IntxUnpackedToInt8Tensor) and bool((t.zero_point != 0).any())
    torch.testing.assert_close(t.dequantize(), q.dequantize(), rtol=0, atol=1e-6)
    theirs = IntxUnpackedToInt8Tensor.from_hp(w, (1, 64), torch.int4, mapping_type=MappingType.ASYMMETRIC)
    assert torch.equal(theirs.zero_point.float().view_as(q.zero), q.zero)
    torch.testing.assert_close(theirs.scale.float().view_as(q.scale), q.scale, rtol=1e-6, atol=0)
    assert (theirs.qdata.float() - q.codes).abs().max() <= 1 and (theirs.qdata.float() != q.codes).float().mean() < 0.01
    sym = qc.rtn(w, qc.Grid("sym", 64))
    err = lambda x: float(((x.dequantize() - w) ** 2).mean())  # noqa: E731
    assert err(q) < 0.8 * err(sym)


def test_folding_scales_leaves_the_model_function_unchanged(tiny_llama):
    loaded = load(str(tiny_llama), None, "cpu")
    ids = torch.arange(5, 60)[None]
    with torch.no_grad():
        ref = loaded.model(input_ids=ids).logits
    g = torch.Generator().manual_seed(0)
    for block in loaded.model.model.layers:
        groups = qc.fold_groups(loaded.model, block)
        assert [x.name for x in groups] == ["attn-in", "attn-out", "mlp-in", "mlp-out"]
        for group in groups:
            k = group.linears[0][1].in_features
            qc.fold(group, torch.rand(k, generator=g) * 3 + 0.2)
    with torch.no_grad():
        got = loaded.model(input_ids=ids).logits
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory):
    from tests.fixtures.tiny import build_llama

    return build_llama(tmp_path_factory.mktemp("q") / "llama", layers=2, hidden=128, heads=4, inter=256)


def held_out(tokenizer):
    # past the 32 x 256 calibration tokens of the tests below (token windows of 64: skip 140 = 8960 tokens)
    return token_batches(tokenizer, "causal-lm", n_batches=2, batch=1, seq_len=64, skip=140)


def block_errors(fp, quantized, batches) -> list[float]:
    """Each decoder block's output error against the float block, both fed the float model's block inputs on
    text the calibration did not read. (A random-init model's token embeddings share no structure: with too few
    calibration tokens, GPTQ fits the tokens it saw and loses on new ones; 8 k tokens generalise.)"""
    def out(block, a, kw):
        o = block(*a, **kw)
        return o[0] if isinstance(o, (tuple, list)) else o

    caught = qc.catch_block_inputs(fp, fp.model.layers, batches)
    errors = []
    with torch.no_grad():
        for bf, bq in zip(fp.model.layers, quantized.model.layers):
            errors.append(sum(float(((out(bq, a, kw) - out(bf, a, kw)) ** 2).mean())
                              for a, kw in zip(caught.args, caught.kwargs)))
            qc.run_block(bf, caught)
    return errors


def logits_on_held_out(model, tokenizer):
    out = []
    for b in held_out(tokenizer):
        with torch.no_grad():
            out.append(torch.log_softmax(model(input_ids=b["input_ids"]).logits.float(), -1))
    return out


def kl(ref, got) -> float:
    return sum(float(torch.nn.functional.kl_div(g, r, log_target=True, reduction="batchmean"))
               for r, g in zip(ref, got))


def test_awq_and_gptq_have_lower_block_error_than_round_to_nearest(wide_llama):
    base = load(str(wide_llama), None, "cpu")
    batches = held_out(base.tokenizer)
    errors, reports = {}, {}
    for algorithm in ("rtn", "awq", "gptq", "awq-gptq"):
        loaded = load(str(wide_llama), None, "cpu")
        # awq alone without its clipping search: on random-init weights (no outliers) clipping need not pay, and
        # here it did not for one block; on SmolLM2's real weights it took awq from +24.4 % to +17.7 % perplexity
        extra = {"awq_clip": False} if algorithm == "awq" else {}
        reports[algorithm] = apply(loaded, "int4-weight-only", algorithm=algorithm, group_size=32, calib_samples=32,
                                   calib_seq_len=256, **extra)
        assert type(loaded.model.model.layers[1].mlp.down_proj.weight).__name__ == "IntxUnpackedToInt8Tensor"
        errors[algorithm] = block_errors(base.model, loaded.model, batches)
    for algorithm in ("gptq", "awq-gptq"):
        assert all(e < r for e, r in zip(errors[algorithm], errors["rtn"])), errors
    # awq alone on random-init weights (no outlier channels to protect) lowers the total but need not win every
    # block on text it did not calibrate on (on the CPU's asymmetric grid block 1 came out 2 % above RTN while
    # block 0 was 36 % below); on SmolLM2's real weights it lowers perplexity (quant_accuracy_*_smollm2*.md)
    assert sum(errors["awq"]) < 0.9 * sum(errors["rtn"]), errors
    for algorithm in ("awq", "gptq", "awq-gptq"):
        rep = reports[algorithm]
        assert rep["layers_quantized"] == 14 and rep["blocks"] == 2 and rep["calibration_tokens"] == 32 * 256
        assert rep["output_error_vs_rtn_median"] < 1.0
    assert reports["gptq"]["output_error_vs_rtn_max"] < 1.0  # GPTQ lowers every layer's error on its inputs


def test_calibrated_int4_exports_and_reloads(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    r = fast_recipe(str(tiny_llama), [("int4-weight-only", {"algorithm": "gptq", "group_size": 32,
                                                            "calib_samples": 2, "calib_seq_len": 32})])
    report = pipeline.run(r.validate(), lambda *a, **k: None, artifact_dir=str(tmp_path / "art"))
    assert report["export"]["verified"], report["export"]
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "art")
    assert type(plain.model.layers[0].self_attn.q_proj.weight).__name__ == "IntxUnpackedToInt8Tensor"


@pytest.mark.parametrize("algorithm", ["rtn", "gptq"])
def test_compressed_tensors_export_holds_the_same_codes_and_reloads_in_plain_transformers(tiny_llama, tmp_path,
                                                                                          algorithm):
    """export=compressed-tensors: codes chosen on the symmetric grid (no zero points), written as W4A16
    pack-quantized (the format vLLM serves) and reloaded by plain transformers + compressed-tensors: the reloaded
    model computes what the in-memory one did, and unpacking the files gives back the very codes and scales."""
    from compressed_tensors.compressors import unpack_from_int32
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    params = {"algorithm": algorithm, "group_size": 32, "export": "compressed-tensors", "calib_samples": 2,
              "calib_seq_len": 32}
    r = fast_recipe(str(tiny_llama), [("int4-weight-only", params)])
    events: list = []
    art = tmp_path / "art"
    report = pipeline.run(r.validate(), lambda t, **k: events.append((t, k)), artifact_dir=str(art))
    assert report["export"]["verified"] and report["export"]["format"] == "compressed-tensors", report["export"]
    assert report["export"]["max_rel_error"] < 1e-5
    opt = report["optimization_reports"][0]
    assert opt["layout"] == "sym" and opt["export_format"] == "compressed-tensors"
    cfg = json.loads((art / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "compressed-tensors" and cfg["format"] == "pack-quantized"
    assert cfg["config_groups"]["group_0"]["weights"] == {**cfg["config_groups"]["group_0"]["weights"],
                                                          "num_bits": 4, "symmetric": True, "group_size": 32}
    assert cfg["ignore"] == ["lm_head"]
    # the files' codes are optbench's codes: quantize the same model again in memory and compare
    again = load(str(tiny_llama), None, "cpu")
    apply(again, "int4-weight-only", **params)
    tensors = load_file(str(art / "model.safetensors"))
    w = again.model.model.layers[1].mlp.down_proj.weight
    key = "model.layers.1.mlp.down_proj"
    assert not w.zero_point.any()
    codes = unpack_from_int32(tensors[f"{key}.weight_packed"], 4, torch.Size(tensors[f"{key}.weight_shape"].tolist()))
    assert torch.equal(codes.to(torch.int8), w.qdata)
    assert torch.equal(tensors[f"{key}.weight_scale"], w.scale.to(tensors[f"{key}.weight_scale"].dtype))
    plain = AutoModelForCausalLM.from_pretrained(art, dtype=torch.float32)
    ids = torch.arange(5, 40)[None]
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, again.model(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)


def test_int8_compressed_tensors_export_holds_the_int8_codes(tiny_llama, tmp_path):
    """int8 weight-only as W8A16 (pack-quantized, 8 bits per channel): the files hold torchao's int8 codes and
    scales, and the folder reloads in plain transformers + compressed-tensors and verifies. W8A8 is not offered
    (see export_ct): int8-dynamic-act has no export parameter."""
    name, fmt, acts = "int8-weight-only", "pack-quantized", None
    from compressed_tensors.compressors import unpack_from_int32
    from safetensors.torch import load_file

    art = tmp_path / "art"
    r = fast_recipe(str(tiny_llama), [(name, {"export": "compressed-tensors"})])
    report = pipeline.run(r.validate(), lambda *a, **k: None, artifact_dir=str(art))
    assert report["export"]["verified"] and report["export"]["format"] == "compressed-tensors", report["export"]
    cfg = json.loads((art / "config.json").read_text())["quantization_config"]
    group = cfg["config_groups"]["group_0"]
    assert cfg["format"] == fmt and group["weights"]["num_bits"] == 8 and group["weights"]["strategy"] == "channel"
    assert (group["input_activations"] or {}).get("strategy") == acts
    again = load(str(tiny_llama), None, "cpu")
    apply(again, name)
    w = again.model.model.layers[0].mlp.gate_proj.weight
    tensors = load_file(str(art / "model.safetensors"))
    key = "model.layers.0.mlp.gate_proj"
    shape = torch.Size(tensors[f"{key}.weight_shape"].tolist())
    codes = unpack_from_int32(tensors[f"{key}.weight_packed"], 8, shape)
    assert torch.equal(codes.to(torch.int8), w.qdata)
    assert torch.equal(tensors[f"{key}.weight_scale"].float(), w.scale.float())
    with pytest.raises(InputError, match="unknown parameter 'export'"):
        optimizations.get("int8-dynamic-act").resolve({"export": "compressed-tensors"})


def test_compressed_tensors_export_refusals(tiny_llama):
    loaded = load(str(tiny_llama), None, "cpu")
    with pytest.raises(InputError, match="export=compressed-tensors.*expected kernel=tinygemm"):
        apply(loaded, "int4-weight-only", kernel="gemlite", export="compressed-tensors", group_size=32)
    with pytest.raises(InputError, match="export"):
        optimizations.get("int4-weight-only").resolve({"export": "gguf"})
    from workbench.core.export import ExportError, export_format

    with pytest.raises(ExportError, match="compressed-tensors: cannot hold optbench-resized"):
        export_format([{"exportable": "custom", "export_format": "compressed-tensors"},
                       {"exportable": "custom", "export_format": "optbench-resized"}])


def test_smoothquant_folds_quantizes_and_exports(wide_llama, tmp_path):
    base = load(str(wide_llama), None, "cpu")
    ref = logits_on_held_out(base.model, base.tokenizer)
    loaded = load(str(wide_llama), None, "cpu")
    rep = apply(loaded, "int8-smoothquant", calib_samples=4, calib_seq_len=64)
    assert rep["layers_quantized"] == 14 and rep["exportable"] == "yes"
    assert type(loaded.model.model.layers[0].mlp.up_proj.weight).__name__ == "Int8Tensor"
    assert kl(ref, logits_on_held_out(loaded.model, loaded.tokenizer)) < 0.05
    path = tmp_path / "sq"
    loaded.model.save_pretrained(path)
    from transformers import AutoModelForCausalLM

    again = AutoModelForCausalLM.from_pretrained(path)
    ids = torch.arange(5, 40)[None]
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, loaded.model(input_ids=ids).logits)


def test_bad_input_is_refused_with_the_reason(tiny_llama, tiny_bert):
    spec = optimizations.get("int4-weight-only")
    with pytest.raises(InputError, match="algorithm"):
        spec.resolve({"algorithm": "magic"})
    loaded = load(str(tiny_llama), None, "cpu")  # hidden 64: group 128 divides no layer
    with pytest.raises(InputError, match="not a multiple of the group size"):
        apply(loaded, "int4-weight-only", algorithm="gptq", group_size=128)
    bert = load(str(tiny_bert), None, "cpu")
    with pytest.raises(InputError, match="Llama-style"):
        apply(bert, "int4-weight-only", algorithm="awq", group_size=32)
    with pytest.raises(InputError, match="calibrates a causal LM"):
        apply(bert, "int4-weight-only", algorithm="gptq", group_size=32)
    with pytest.raises(InputError, match="kernel=gemlite: GemLite's kernels are Triton on CUDA"):
        apply(loaded, "int4-weight-only", algorithm="hqq", kernel="gemlite", group_size=32)


@pytest.mark.gpu
@CUDA
def test_tinygemm_tensor_from_calibrated_codes_computes_the_dequantized_matmul():
    w = torch.randn(200, 1536, device="cuda")  # out not a multiple of 8, in not of 1024: both padded
    x = correlated_inputs(256, 1536, 3).cuda()
    q = qc.gptq(w, x.t() @ x, qc.Grid("asym", 128))
    t = qc.to_torchao(q, torch.bfloat16)
    xb = x[:16].bfloat16()
    got = torch.nn.functional.linear(xb, t).float()
    want = xb.float() @ q.dequantize().t()
    assert float((got - want).abs().max() / want.abs().max()) < 2e-2


@pytest.mark.gpu
@CUDA
def test_compressed_tensors_export_on_cuda(tiny_llama, tmp_path):
    """On CUDA export=compressed-tensors keeps the integer layout (no tinygemm) and its export verifies there."""
    r = fast_recipe(str(tiny_llama), [("int4-weight-only", {"algorithm": "rtn", "group_size": 32,
                                                            "export": "compressed-tensors"})])
    r.device = "cuda"
    report = pipeline.run(r.validate(), lambda *a, **k: None, artifact_dir=str(tmp_path / "art"))
    assert report["export"]["verified"] and report["export"]["format"] == "compressed-tensors", report["export"]
    assert report["optimization_reports"][0]["layout"] == "sym"
