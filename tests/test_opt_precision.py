"""Precision: cast (existing) and autocast with fp32 islands (fp32 weights, half-precision matmuls)."""

import pytest

import torch  # a pinned dependency: a broken install must fail, not skip

from tests.conftest import fast_recipe  # noqa: E402
from workbench.core import optimizations, pipeline  # noqa: E402
from workbench.core.models import load  # noqa: E402
from workbench.core.optimizations.context import ApplyContext  # noqa: E402


def apply(loaded, name, **params):
    spec = optimizations.get(name)
    ctx = ApplyContext("cpu", loaded.task, loaded.tokenizer)
    ctx.extra["generate_kwargs"] = loaded.generate_kwargs
    return spec.apply(loaded.model, spec.resolve(params), ctx).report


def test_autocast_keeps_fp32_weights_and_computes_matmuls_in_bf16(tiny_llama):
    loaded = load(str(tiny_llama), None, "cpu")
    ids = torch.arange(3, 40)[None]
    with torch.inference_mode():
        ref = loaded.model(input_ids=ids).logits.float()
    seen = {}
    lin = loaded.model.model.layers[0].mlp.down_proj
    lin.register_forward_hook(lambda m, a, out: seen.update(dtype=out.dtype))
    rep = apply(loaded, "bf16", mode="autocast")
    assert rep["mode"] == "autocast" and rep["exportable"] == "no"
    assert rep["bytes_after"] == rep["bytes_before"]
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    with torch.inference_mode():
        got = loaded.model(input_ids=ids).logits.float()
    assert seen["dtype"] == torch.bfloat16  # the matmul really ran in bf16
    assert not torch.equal(got, ref)
    cos = torch.nn.functional.cosine_similarity(got.flatten(), ref.flatten(), dim=0)
    assert cos > 0.99


def test_fp16_cast_halves_the_model(tiny_bert):
    loaded = load(str(tiny_bert), None, "cpu")
    rep = apply(loaded, "fp16")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float16}
    assert rep["bytes_after"] * 2 == pytest.approx(rep["bytes_before"], rel=0.01)


def test_autocast_run_reports_no_export_with_reason(tiny_bert, tmp_path):
    r = fast_recipe(str(tiny_bert), [("bf16", {"mode": "autocast"})])
    report = pipeline.run(r.validate(), lambda *a, **k: None, artifact_dir=str(tmp_path / "art"))
    assert report["export"]["verified"] is False and "autocast" in report["export"]["error"]
    assert not (tmp_path / "art").exists()
    assert report["optimized"]["dtype"] == "float32"
    assert report["accuracy"]["cosine_to_baseline"]["value"] > 0.99


def test_bf16_cast_keeps_rotary_frequencies_fp32_so_the_export_reloads_identically(tiny_llama, tmp_path):
    """A plain .to(bfloat16) rounded RoPE's inv_freq while a reload (from_pretrained, dtype=bf16) keeps it fp32: the
    exported model computed other logits than the in-memory one (3 % on demo:smollm2 on an AVX2 CPU). Cast like a
    reload, and the export is the same model: its reloaded outputs match the in-memory ones exactly."""
    loaded = load(str(tiny_llama), None, "cpu")
    spec = optimizations.get("bf16")
    spec.apply(loaded.model, spec.resolve({}), ApplyContext("cpu", loaded.task, loaded.tokenizer))
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    freqs = {n: b.dtype for n, b in loaded.model.named_buffers() if n.endswith("inv_freq")}
    assert freqs and set(freqs.values()) == {torch.float32}
    r = fast_recipe(str(tiny_llama), [("bf16", {}), ("int8-weight-only", {})])
    report = pipeline.run(r.validate(), lambda *a, **k: None, artifact_dir=str(tmp_path / "art"))
    assert report["export"]["verified"] and report["export"]["max_rel_error"] <= 1e-6
