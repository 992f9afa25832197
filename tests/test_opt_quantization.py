"""torchao quantization (int8 weight-only, int8 dynamic activation, fp8 weight-only; int4/fp8-dynamic on CUDA):
real byte savings, tensor types, and export through transformers' TorchAoConfig path."""

import pytest

import torch  # a pinned dependency: a broken install must fail, not skip
import torchao  # noqa: F401  (pinned dependency)

from tests.conftest import fast_recipe  # noqa: E402
from workbench.core import optimizations, pipeline  # noqa: E402
from workbench.core.errors import InputError  # noqa: E402
from workbench.core.models import load  # noqa: E402
from workbench.core.optimizations.context import ApplyContext  # noqa: E402

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (int4 tinygemm / float8 kernels); "
                                                                "run on the GPU machine with pytest -m gpu")


def apply(loaded, name, device="cpu", **params):
    spec = optimizations.get(name)
    ctx = ApplyContext(device, loaded.task, loaded.tokenizer)
    ctx.extra["generate_kwargs"] = loaded.generate_kwargs
    return spec.apply(loaded.model, spec.resolve(params), ctx).report


def test_int8_weight_only_shrinks_and_exports_with_torchao_config(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    r = fast_recipe(str(tiny_llama), [("int8-weight-only", {})])
    report = pipeline.run(r.validate(), lambda *a, **k: None, artifact_dir=str(tmp_path / "art"))
    rep = report["optimization_reports"][0]
    assert rep["layers_quantized"] == 14  # 2 layers x 7 Linear, head left in fp32
    assert rep["linear_bytes_after"] < 0.3 * rep["linear_bytes_before"]  # 1 byte + scales vs 4 bytes
    assert report["export"]["verified"] and report["export"]["format"] == "transformers"
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "art")
    assert type(plain.model.layers[0].mlp.up_proj.weight).__name__ == "Int8Tensor"
    assert plain.config.quantization_config.quant_method == "torchao"
    assert report["accuracy"]["next_token_agreement"]["value"] > 0.8


def test_int8_dynamic_activation_and_fp8_weight_only_types(tiny_bert):
    for name, kind in (("int8-dynamic-act", "Int8Tensor"), ("fp8-weight-only", "Float8Tensor")):
        loaded = load(str(tiny_bert), None, "cpu")
        ids = torch.arange(5, 30)[None]
        with torch.inference_mode():
            ref = loaded.model(input_ids=ids).last_hidden_state
        rep = apply(loaded, name)
        w = loaded.model.encoder.layer[0].intermediate.dense.weight
        assert type(w).__name__ == kind
        assert rep["bytes_after"] < rep["bytes_before"]
        assert rep["linear_bytes_after"] < 0.3 * rep["linear_bytes_before"]
        with torch.inference_mode():
            got = loaded.model(input_ids=ids).last_hidden_state
        assert torch.nn.functional.cosine_similarity(got.flatten(), ref.flatten(), dim=0) > 0.98
        assert "batch_note" not in rep  # the batch figures were measured on CUDA: a CPU run carries none


@pytest.mark.parametrize("runtime", ["compile", "graph-decode"])
def test_int8_dynamic_act_refuses_compile_on_cuda_only(tiny_llama, runtime):
    """torch._int_mm under compile needs > 16 rows (failed on an H200 at minilm's pooler): a clear error on CUDA
    before anything compiles; on CPU the combination stays allowed (inductor uses a float matmul there)."""
    loaded = load(str(tiny_llama), None, "cpu")
    apply(loaded, "int8-dynamic-act")
    with pytest.raises(InputError, match=f"^{runtime}: int8-dynamic-act cannot be compiled on CUDA"):
        apply(loaded, runtime, device="cuda")
    assert apply(loaded, runtime, device="cpu")["mode" if runtime == "graph-decode" else "mode_used"]


def test_int8_dynamic_torchao_backend_is_exportable(tiny_bert):
    loaded = load(str(tiny_bert), None, "cpu")
    rep = apply(loaded, "int8-dynamic", backend="torchao")
    assert rep["exportable"] == "yes" and rep["tensor_types"] == ["Int8Tensor"]


def test_gpu_only_kinds_are_rejected_on_cpu(tiny_llama):
    for name in ("fp8-dynamic",):
        with pytest.raises(InputError, match="does not run on cpu"):
            fast_recipe(str(tiny_llama), [(name, {})]).validate(device="cpu")


@pytest.mark.gpu
@CUDA
def test_int4_weight_only_on_cuda(tmp_path):
    from tests.fixtures.tiny import build_llama

    # input sizes that are multiples of 1024: torchao pads smaller ones up to 1024 (no saving; measured on an H200)
    path = build_llama(tmp_path / "llama", hidden=1024, heads=8, inter=2048)
    loaded = load(str(path), None, "cuda")
    rep = apply(loaded, "int4-weight-only", device="cuda", group_size=64)
    assert "padded_to_1024" not in rep
    assert rep["cast_to"] == "bfloat16" or next(loaded.model.parameters()).dtype == torch.bfloat16
    assert type(loaded.model.model.layers[0].mlp.up_proj.weight).__name__ == "Int4TilePackedTo4dTensor"
    assert rep["linear_bytes_after"] < 0.35 * rep["linear_bytes_before"]  # vs bf16: 0.5 byte + group scales
    assert rep["pays_at_batch"] == 1 and rep["batch_note"].startswith("tinygemm int4")  # nearest measured: 1B
    out = loaded.model.generate(torch.arange(3, 20, device="cuda")[None], max_new_tokens=4, do_sample=False)
    assert out.shape[1] == 21


@pytest.mark.gpu
@CUDA
def test_fp8_dynamic_on_cuda(tmp_path):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 matmuls need compute capability >= 8.9")
    from tests.fixtures.tiny import build_llama

    path = build_llama(tmp_path / "llama", hidden=256, inter=512)
    loaded = load(str(path), None, "cuda")
    rep = apply(loaded, "fp8-dynamic", device="cuda")
    assert rep["pays_at_batch"] == 0 and "0.92x" in rep["batch_note"]
    assert type(loaded.model.model.layers[0].mlp.up_proj.weight).__name__ == "Float8Tensor"
    with torch.inference_mode():
        assert torch.isfinite(loaded.model(input_ids=torch.arange(3, 35, device="cuda")[None]).logits).all()
