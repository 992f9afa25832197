"""Selective INT8: per-layer sensitivity, the most sensitive layers kept fp32, export of the mixed model."""

import pytest

import torch  # a pinned dependency: a broken install must fail, not skip

from tests.conftest import fast_recipe  # noqa: E402
from workbench.core import optimizations, pipeline  # noqa: E402
from workbench.core.export import load_artifact  # noqa: E402
from workbench.core.models import load  # noqa: E402
from workbench.core.optimizations.context import ApplyContext, linear_modules  # noqa: E402


def apply(loaded, **params):
    spec = optimizations.get("int8-selective")
    ctx = ApplyContext("cpu", loaded.task, loaded.tokenizer)
    return spec.apply(loaded.model, spec.resolve({"calib_samples": 4, **params}), ctx).report


def kinds(model):
    from torch.ao.nn.quantized.dynamic import Linear as DynLinear

    fp = [n for n, m in model.named_modules() if type(m) is torch.nn.Linear]
    q = [n for n, m in model.named_modules() if isinstance(m, DynLinear)]
    return fp, q


def test_keeps_the_most_sensitive_layers_fp32(tiny_llama):
    loaded = load(str(tiny_llama), None, "cpu")
    n = len(linear_modules(loaded.model))
    rep = apply(loaded, keep=3)
    fp, q = kinds(loaded.model)
    assert len(rep["kept_fp32"]) == 3 and set(rep["kept_fp32"]) <= set(fp)
    assert len(q) == n - 3 == rep["layers_quantized"]
    order = sorted(rep["sensitivity"], key=rep["sensitivity"].get, reverse=True)
    assert rep["kept_fp32"] == order[:3]  # kept = top of the measured ranking
    assert all(v >= 0 for v in rep["sensitivity"].values())
    assert rep["linear_bytes_before"] > rep["linear_bytes_after"]


def test_search_meets_the_target_with_the_fewest_layers(tiny_bert):
    loaded = load(str(tiny_bert), None, "cpu")
    loose = apply(loaded, min_cosine=0.0)  # any error passes: nothing kept
    assert loose["kept_fp32"] == [] and loose["calibration_error"] <= loose["target"]["tolerance"]
    loaded = load(str(tiny_bert), None, "cpu")
    strict = apply(loaded, min_cosine=1.0, scheme="per-tensor")  # no error allowed
    assert strict["calibration_error"] <= 1e-12
    # every smaller number of kept layers that was tried missed the target
    tried = {int(k): v for k, v in strict["error_by_kept"].items()}
    k = len(strict["kept_fp32"])
    assert all(v > 0 for kk, v in tried.items() if kk < k)


def test_mixed_model_exports_and_reloads(tiny_bert, tmp_path):
    r = fast_recipe(str(tiny_bert), [("int8-selective", {"keep": 4, "calib_samples": 4})])
    report = pipeline.run(r.validate(), lambda *a, **k: None, artifact_dir=str(tmp_path / "art"))
    assert report["export"]["verified"] and report["export"]["format"] == "optbench-int8-dynamic"
    model, _, manifest = load_artifact(tmp_path / "art")
    fp, q = kinds(model)
    kept = report["optimization_reports"][0]["kept_fp32"]
    assert set(kept) <= set(fp) and len(q) == report["optimization_reports"][0]["layers_quantized"]


def test_kl_and_cosine_errors_are_never_negative():
    """KL >= 0 and 1 - cosine >= 0 by construction, also where two models almost agree (the case float rounding
    took below zero on an AVX2 CPU), and the KL still equals the textbook value where they differ."""
    from workbench.core.optimizations._common import error

    g = torch.Generator().manual_seed(0)
    for scale in (1.0, 10.0, 30.0):
        logits = torch.randn(4, 16, 49152, generator=g) * scale
        ref = torch.log_softmax(logits, -1)
        for eps in (0.0, 1e-7, 1e-6, 1e-4):
            got = torch.log_softmax(logits + eps * torch.randn(logits.shape, generator=g), -1)
            assert error("causal-lm", ref, got) >= 0.0
        got = torch.log_softmax(torch.randn(4, 16, 49152, generator=g) * scale, -1)
        textbook = float((ref.double().exp() * (ref.double() - got.double())).sum(-1).mean())
        assert error("causal-lm", ref, got) == pytest.approx(textbook, rel=1e-4)
    from workbench.core.evaluate import kl_divergence  # the classifier eval's KL is the same function

    cls = torch.log_softmax(torch.randn(512, 3, generator=g) * 5, -1)
    for eps in (0.0, 1e-7, 1e-6):
        assert kl_divergence(cls, torch.log_softmax(cls + eps * torch.randn(cls.shape, generator=g), -1)) >= 0.0
    emb = torch.nn.functional.normalize(torch.randn(64, 384, generator=g), dim=-1)
    assert error("encoder", emb, emb.clone()) >= 0.0
    assert error("encoder", emb, torch.nn.functional.normalize(emb + 1e-7, dim=-1)) >= 0.0
