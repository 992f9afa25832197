"""kernel=gemlite (int4-weight-only, int8-weight-only): workbench's codes packed into GemLite's Triton kernels.

On CPU (CI) GemLite cannot run, so the kernel is replaced by a reference that computes GemLite's documented
format, (W_q - zeros) * scales per group (int8: W_q * scale per row): these tests check what workbench does —
the grid conversion, q/k/v and gate/up packed into one kernel with each projection its slice, the calibrated
codes reaching the kernel, the refusals. The real kernels are checked by the ``gpu`` tests at the end."""

from __future__ import annotations

import pytest

import torch

from workbench.core import optimizations
from workbench.core.errors import InputError
from workbench.core.models import load
from workbench.core.optimizations import _gemlite
from workbench.core.optimizations import quant_calibrate as qc
from workbench.core.optimizations.context import ApplyContext


def apply(loaded, name, device="cpu", **params):
    spec = optimizations.get(name)
    ctx = ApplyContext(device, loaded.task, loaded.tokenizer)
    return spec.apply(loaded.model, spec.resolve(params), ctx).report


class Reference(torch.nn.Module):
    """What a GemLite kernel computes, from the tensors workbench hands it (GemLite's HQQ format)."""

    def __init__(self, weight) -> None:
        super().__init__()
        self.register_buffer("w", weight)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return torch.nn.functional.linear(x, self.w.to(x.dtype))


def ref_int4(qw, dtype):
    n, k = qw.codes.shape
    g = qw.grid.group
    codes = qw.codes.float().view(n, k // g, g)
    w = (codes - _gemlite.hqq_zeros(qw).to(dtype).float()[..., None]) * qw.scale.to(dtype).float()[..., None]
    return Reference(w.view(n, k))


def ref_int8(payload, dtype):
    codes, scale = payload
    return Reference(codes.float() * scale.to(dtype).float())


@pytest.fixture
def fake_gemlite(monkeypatch):
    """GemLite's kernels replaced by the reference; the device check lets CPU through."""
    monkeypatch.setattr(_gemlite, "check", lambda opt, device: None)
    monkeypatch.setattr(_gemlite, "int4_kernel", ref_int4)
    monkeypatch.setattr(_gemlite, "int8_kernel", lambda codes, scale, dtype: ref_int8((codes, scale), dtype))


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def dequantized_copy(path, weight_of):
    """The model with every decoder Linear's weight replaced by ``weight_of(weight)``, in bf16 (what the kernels'
    codes mean)."""
    ref = load(str(path), None, "cpu")
    ref.model.to(torch.bfloat16)
    for name, mod in ref.model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name != "lm_head":
            mod.weight.data = weight_of(mod.weight.data.float()).to(torch.bfloat16)
    return ref.model


@pytest.mark.parametrize("algorithm", ["rtn", "hqq"])
def test_hqq_zeros_reproduce_the_grid_dequantization(algorithm):
    from workbench.core.optimizations.quant_int4 import hqq

    torch.manual_seed(0)
    w = torch.randn(48, 256) * 0.05
    q = qc.rtn(w, qc.Grid("asym", 64)) if algorithm == "rtn" else hqq(w, 64)
    assert q.codes.min() >= 0 and q.codes.max() <= 15
    gemlite_form = (q.codes.view(48, 4, 64) - _gemlite.hqq_zeros(q)[..., None]) * q.scale[..., None]
    torch.testing.assert_close(gemlite_form.view(48, 256), q.dequantize(), rtol=0, atol=1e-6)
    err = float((q.dequantize() - w).abs().mean() / w.abs().mean())
    assert 0.01 < err < 0.2  # really quantized to 16 levels, and close


def test_int4_gemlite_packs_qkv_and_gate_up_into_one_kernel_each(tiny_llama, fake_gemlite):
    loaded = load(str(tiny_llama), None, "cpu")
    rep = apply(loaded, "int4-weight-only", algorithm="rtn", kernel="gemlite", group_size=32)
    layers = loaded.model.config.num_hidden_layers
    # per layer: one kernel for q/k/v, one for gate/up, o_proj and down_proj alone
    assert rep["gemlite"] == {"kernels": 4 * layers, "packed_groups": 2 * layers, "layers": 7 * layers}
    assert rep["exportable"] == "no" and rep["kernel"] == "gemlite" and rep["cast_to"] == "bfloat16"
    assert rep["pays_at_batch"] == 0  # GemLite int4 paid at no batch measured: the Result pane always warns
    attn = loaded.model.model.layers[0].self_attn
    assert type(attn.q_proj).__name__ == "GemLiteProjection" and attn.k_proj.index == 1
    assert attn.q_proj.kernel.w.shape[0] == attn.q_proj.out_features + attn.k_proj.out_features \
        + attn.v_proj.out_features
    assert "kernel" not in dict(attn.k_proj.named_children())  # the bytes are counted once
    ids = torch.arange(5, 30)[None]
    got = logits(loaded.model, ids)
    kernel = attn.q_proj.kernel
    assert kernel.calls == 1  # k and v took their slices of q's call
    want = logits(dequantized_copy(tiny_llama, lambda w: qc.rtn(w, qc.Grid("asym", 32)).dequantize()), ids)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-2 * float(want.abs().max()))


def test_a_projection_called_on_another_input_computes_its_own_slice(tiny_llama, fake_gemlite):
    loaded = load(str(tiny_llama), None, "cpu")
    apply(loaded, "int8-weight-only", kernel="gemlite")
    attn = loaded.model.model.layers[0].self_attn
    x = torch.randn(1, 3, attn.q_proj.in_features, dtype=torch.bfloat16)
    attn.q_proj(x)
    other = torch.randn_like(x)
    w = attn.q_proj.kernel.w
    n_q, n_k = attn.q_proj.out_features, attn.k_proj.out_features
    torch.testing.assert_close(attn.k_proj(other).float(),
                               (other.float() @ w[n_q:n_q + n_k].t()), rtol=0, atol=1e-2)
    torch.testing.assert_close(attn.k_proj(x).float(), (x.float() @ w[n_q:n_q + n_k].t()), rtol=0, atol=1e-2)


def test_int8_gemlite_uses_per_row_symmetric_codes(tiny_llama, fake_gemlite):
    loaded = load(str(tiny_llama), None, "cpu")
    before = {n: m.weight.detach().float().clone() for n, m in loaded.model.named_modules()
              if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    rep = apply(loaded, "int8-weight-only", kernel="gemlite")
    assert rep["layers_quantized"] == len(before) and rep["exportable"] == "no"
    assert rep["pays_at_batch"] == 1 and "batch 1" in rep["batch_note"]  # the Result pane warns above it
    down = loaded.model.model.layers[1].mlp.down_proj.kernel.w
    w0 = before["model.layers.1.mlp.down_proj"]
    scale = w0.abs().amax(1, keepdim=True) / 127
    assert float((down - w0).abs().max()) <= float(scale.max()) * 0.51 + 1e-3  # half a step (bf16 scale)
    assert not torch.equal(down, w0)
    ids = torch.arange(5, 30)[None]

    def int8(w):
        c, s = _gemlite.int8_codes(w)
        return c.float() * s

    want = logits(dequantized_copy(tiny_llama, int8), ids)
    got = logits(loaded.model, ids)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-2 * float(want.abs().max()))



def test_codes_are_made_one_group_at_a_time(tiny_llama, fake_gemlite, monkeypatch):
    """Data-free kernel=gemlite computes a layer's codes only when its group packs: between two kernels at most
    one group's codes (a byte per weight) are made, so the transient memory is one group, not the model."""
    events = []
    codes = _gemlite.int8_codes
    monkeypatch.setattr(_gemlite, "int8_codes", lambda w: (events.append("codes"), codes(w))[1])
    monkeypatch.setattr(_gemlite, "int8_kernel",
                        lambda c, sc, dtype: (events.append("kernel"), ref_int8((c, sc), dtype))[1])
    loaded = load(str(tiny_llama), None, "cpu")
    rep = apply(loaded, "int8-weight-only", kernel="gemlite")
    runs, n = [], 0
    for e in events:
        if e == "codes":
            n += 1
        else:
            runs.append(n)
            n = 0
    assert len(runs) == rep["gemlite"]["kernels"] and sum(runs) == rep["layers_quantized"]
    assert max(runs) == 3 and sorted(set(runs)) == [1, 2, 3]  # q/k/v, gate/up, then the lone o/down

def test_calibrated_codes_reach_the_gemlite_kernel(tiny_llama, fake_gemlite):
    loaded = load(str(tiny_llama), None, "cpu")
    rep = apply(loaded, "int4-weight-only", algorithm="gptq", kernel="gemlite", group_size=32, calib_samples=4,
                calib_seq_len=64)
    assert rep["layout"] == "asym" and rep["output_error_vs_rtn_median"] < 1.0  # GPTQ beat round to nearest
    assert rep["gemlite"]["packed_groups"] == 2 * loaded.model.config.num_hidden_layers
    up = loaded.model.model.layers[0].mlp.gate_proj.kernel.w  # gate rows, then up rows
    n = loaded.model.model.layers[0].mlp.gate_proj.out_features
    gate_rtn = qc.rtn(load(str(tiny_llama), None, "cpu").model.model.layers[0].mlp.gate_proj.weight.float(),
                      qc.Grid("asym", 32)).dequantize()
    assert not torch.allclose(up[:n], gate_rtn, atol=1e-4)  # GPTQ's codes, not round to nearest's
    assert torch.isfinite(logits(loaded.model, torch.arange(5, 30)[None])).all()


def test_gemlite_refusals(tiny_llama, tmp_path):
    loaded = load(str(tiny_llama), None, "cpu")
    before = loaded.model.model.layers[0].mlp.up_proj.weight.clone()
    for name, params in (("int4-weight-only", {"algorithm": "gptq", "group_size": 32}), ("int8-weight-only", {})):
        with pytest.raises(InputError, match=f"{name}:kernel=gemlite: GemLite's kernels are Triton on CUDA"):
            apply(loaded, name, kernel="gemlite", **params)
    with pytest.raises(InputError, match="int8-weight-only:export=compressed-tensors.*expected kernel=torchao"):
        apply(loaded, "int8-weight-only", kernel="gemlite", export="compressed-tensors")
    assert torch.equal(loaded.model.model.layers[0].mlp.up_proj.weight, before)  # refused before any change
    for name in ("int4-weight-only", "int8-weight-only"):
        spec = optimizations.get(name)
        assert "kernel=gemlite" in spec.export_refusal(spec.resolve({"kernel": "gemlite"}))
        assert spec.export_refusal(spec.resolve({})) is None


def test_run_export_refuses_gemlite_before_loading(tiny_llama, tmp_path, capsys):
    from workbench.cli.main import main

    out = tmp_path / "export"
    rc = main(["run", "--model", str(tiny_llama), "--opt", "int8-weight-only:kernel=gemlite",
               "--export", str(out), "--json"])
    assert rc == 2 and not out.exists()
    assert "int8-weight-only cannot be exported (kernel=gemlite" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ the real kernels

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (GemLite's Triton kernels)")


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("name,params", [("int4-weight-only", {"algorithm": "rtn", "group_size": 128}),
                                         ("int8-weight-only", {})])
def test_gemlite_kernels_compute_what_their_codes_mean(name, params):
    pytest.importorskip("gemlite")
    import tempfile
    from pathlib import Path

    from tests.fixtures.tiny import build_llama

    path = build_llama(Path(tempfile.mkdtemp()) / "llama", hidden=1024, heads=8, inter=2048)

    def weight_of(w):
        if name == "int8-weight-only":
            c, s = _gemlite.int8_codes(w)
            return c.float() * s
        return qc.rtn(w, qc.Grid("asym", 128)).dequantize()

    ref = load(str(path), None, "cuda")
    ref.model.to(torch.bfloat16)
    for n, mod in ref.model.named_modules():
        if isinstance(mod, torch.nn.Linear) and n != "lm_head":
            mod.weight.data = weight_of(mod.weight.data.float()).to(torch.bfloat16)
    loaded = load(str(path), None, "cuda")
    rep = apply(loaded, name, device="cuda", kernel="gemlite", **params)
    assert rep["gemlite"]["packed_groups"] == 4 and rep["exportable"] == "no"
    # GemLite's packed bytes: int4 about a quarter of bf16 (plus scales and zeros), int8 about half
    assert rep["linear_bytes_after"] < (0.35 if name.startswith("int4") else 0.6) * rep["linear_bytes_before"]
    mlp, ref_mlp = loaded.model.model.layers[0].mlp, ref.model.model.layers[0].mlp
    w = torch.cat([ref_mlp.gate_proj.weight, ref_mlp.up_proj.weight]).float()
    ids = torch.arange(3, 40, device="cuda")[None]
    with torch.inference_mode():
        for m in (1, 8):  # the kernel's GEMV and GEMM paths against the codes' own matmul
            x = torch.randn(m, 1024, device="cuda", dtype=torch.bfloat16)
            got, want = mlp.gate_proj.kernel(x).float(), x.float() @ w.t()
            assert float((got - want).abs().max() / want.abs().max()) < 2e-2, m
        got, want = loaded.model(input_ids=ids).logits.float(), ref.model(input_ids=ids).logits.float()
    assert float((got - want).abs().max() / want.abs().max()) < 3e-2


def test_a_gemlite_run_under_graph_decode_keeps_its_results_without_an_artifact(tiny_llama, fake_gemlite, tmp_path):
    from tests.conftest import fast_recipe
    from workbench.core import pipeline

    r = fast_recipe(str(tiny_llama), [("int8-weight-only", {"kernel": "gemlite"}), ("graph-decode", {"fuse": True})])
    report = pipeline.run(r.validate(), lambda *a, **k: None, artifact_dir=str(tmp_path / "art"))
    opt = report["optimization_reports"][0]
    assert opt["kernel"] == "gemlite" and opt["gemlite"]["packed_groups"] == 4
    assert report["optimized"]["decode_ms_per_token"]["count"] >= 2
    assert report["export"]["verified"] is False
    assert "cannot be exported" in report["export"]["error"] and "GemLite" in report["export"]["error"]
    assert not (tmp_path / "art").exists() or not any((tmp_path / "art").iterdir())


def test_graph_decode_over_gemlite_projections_gives_generates_tokens(tiny_llama, fake_gemlite):
    from workbench.core.optimizations.fastgen import GraphedGreedy

    loaded = load(str(tiny_llama), None, "cpu")
    apply(loaded, "int4-weight-only", kernel="gemlite", group_size=32)
    ids = torch.arange(7, 19)[None]
    with torch.inference_mode():
        want = loaded.model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)[:, ids.shape[1]:]
        gen = GraphedGreedy(loaded.model, batch=1, max_len=64, mode="eager", fuse=True)
        got = gen.generate(ids, 8)
    assert torch.equal(got.reshape(-1)[-8:], want.reshape(-1))
