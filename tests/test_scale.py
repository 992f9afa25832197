"""Real-size behaviour checked on tiny models (CPU, CI-sized, no timing assertions): the model builder, the content
fingerprint, the streamed int8-selective, head pruning that transformers cannot describe in a config, where an
export is verified, and the 8B benchmark's result files. GPU-only checks are marked ``gpu``."""

from __future__ import annotations

import json
import sys
import weakref
from pathlib import Path

import pytest
import torch

from tests.conftest import fast_recipe

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    import build_model

    out = tmp_path_factory.mktemp("scale") / "tiny-llama"
    build_model.build_folder("tiny-llama", out, device="cpu")
    return out


def test_build_model_writes_a_folder_optbench_loads(tiny_folder):
    from transformers import AutoModelForCausalLM

    from workbench.core.models import load

    cfg = json.loads((tiny_folder / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["tie_word_embeddings"] is False
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16"
    assert (tiny_folder / "tokenizer.json").is_file() and list(tiny_folder.glob("*.safetensors"))
    loaded = load(str(tiny_folder), device="cpu")
    assert loaded.task == "causal-lm" and len(loaded.tokenizer) == 49152
    # the rotary frequencies were rebuilt after the meta-device build: same as a model made the ordinary way
    plain = AutoModelForCausalLM.from_pretrained(tiny_folder, dtype="auto")
    ref = type(plain.model.rotary_emb)(config=plain.config)
    assert torch.equal(plain.model.rotary_emb.inv_freq, ref.inv_freq)
    assert float(plain.model.layers[0].mlp.up_proj.weight.detach().float().std()) == pytest.approx(0.02, rel=0.1)


def test_qwen_and_llama_8b_shapes_are_the_real_ones():
    import build_model

    with torch.device("meta"):
        from transformers import AutoModelForCausalLM

        llama = AutoModelForCausalLM.from_config(build_model.make_config("llama-8b"))
        qwen = AutoModelForCausalLM.from_config(build_model.make_config("qwen-7b"))
    assert sum(p.numel() for p in llama.parameters()) == 8_030_261_248  # Llama-3.1-8B
    assert sum(p.numel() for p in qwen.parameters()) == 7_615_616_512  # Qwen2.5-7B
    assert qwen.model.layers[0].self_attn.q_proj.bias is not None



def test_gpu_ladder_counts_the_bytes_of_build_model_shapes(monkeypatch):
    """The ladder's MBU for build_model.py's shapes (llama-8b, tiny-llama), which are not in its own CONFIGS: weights
    read per step (the untied input table excluded) + the KV cache at mid-generation; an unknown name is refused."""
    import gpu_ladder

    assert gpu_ladder.shape("llama-8b")["num_key_value_heads"] == 8
    kw = gpu_ladder.shape("tiny-llama")
    monkeypatch.setattr(gpu_ladder, "DEVICE", "cpu")
    model = gpu_ladder.build(torch, "tiny-llama", "sdpa")  # the ladder's own builder
    assert model.config.hidden_size == kw["hidden_size"] and next(model.parameters()).dtype == torch.bfloat16
    need = gpu_ladder.bytes_per_token(model, kw, batch=8, prompt=128, new=128)
    params = sum(p.numel() for p in model.parameters())
    head_dim = kw.get("head_dim") or kw["hidden_size"] // kw["num_attention_heads"]
    kv = 2 * kw["num_hidden_layers"] * kw["num_key_value_heads"] * head_dim * (128 + 64) * 2 * 8
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())  # the rotary frequencies
    assert need == (params - kw["vocab_size"] * kw["hidden_size"]) * 2 + buffers + kv
    with pytest.raises(SystemExit, match="--models llama-9b: expected one of"):
        gpu_ladder.shape("llama-9b")

def test_fingerprint_hashes_every_byte_and_remembers(tmp_path, monkeypatch):
    from workbench.core import models
    from workbench.core.modelref import resolve

    monkeypatch.setattr(models, "_PIECE", 1 << 10)  # several pieces even for a small file
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    data = bytearray(range(256)) * 40
    (folder / "model.safetensors").write_bytes(bytes(data))
    ref = resolve(str(folder))
    first = models.fingerprint(ref)
    assert models.fingerprint(ref) == first  # from the memo
    memo = json.loads(models.memo_path().read_text())
    assert any(k.startswith(str((folder / "model.safetensors").resolve())) for k in memo)
    data[5000] ^= 1  # one bit, same size: a new mtime makes a new key, and the content differs
    (folder / "model.safetensors").write_bytes(bytes(data))
    assert models.fingerprint(ref) != first


def test_int8_selective_streams_its_quantized_twins(tiny_llama, monkeypatch):
    """The ranking holds one quantized twin at a time (it used to hold one per layer beside every original), and no
    moment holds more twins than layers + 1."""
    from workbench.core import optimizations
    from workbench.core.models import load
    from workbench.core.optimizations import quant_selective
    from workbench.core.optimizations.context import ApplyContext

    live: set[int] = set()
    real = quant_selective._quantized_copy

    def counting(module, scheme):
        q = real(module, scheme)
        key = id(q)
        live.add(key)
        weakref.finalize(q, live.discard, key)
        return q

    monkeypatch.setattr(quant_selective, "_quantized_copy", counting)
    loaded = load(str(tiny_llama), device="cpu")
    n_layers = sum(1 for m in loaded.model.modules() if isinstance(m, torch.nn.Linear)) - 1  # but lm_head
    ranking, overall = [], []

    def progress(f, **_):
        (ranking if f < 0.8 - 1e-9 else overall).append(len(live))

    spec = optimizations.get("int8-selective")
    ctx = ApplyContext(device="cpu", task="causal-lm", tokenizer=loaded.tokenizer, progress=progress)
    rep = spec.apply(loaded.model, spec.resolve({"scheme": "per-channel", "calib_samples": 4}), ctx).report
    assert ranking and max(ranking) <= 1, ranking
    assert max(overall) <= n_layers + 1
    assert len(live) == rep["layers_quantized"]  # what is left is exactly the model's quantized layers


def test_int8_selective_torchao_accepts_a_bf16_model(tiny_llama):
    import torchao  # noqa: F401  (pinned: a broken install must fail, not skip)
    from workbench.core import optimizations
    from workbench.core.models import load
    from workbench.core.optimizations.context import ApplyContext

    loaded = load(str(tiny_llama), device="cpu")
    loaded.model.to(torch.bfloat16)
    spec = optimizations.get("int8-selective")
    ctx = ApplyContext(device="cpu", task="causal-lm", tokenizer=loaded.tokenizer)
    rep = spec.apply(loaded.model, spec.resolve({"scheme": "torchao", "calib_samples": 4, "keep": 1}), ctx).report
    assert rep["layers_quantized"] == rep["layers"] - 1
    with pytest.raises(Exception, match="expected a float32 model"):
        fresh = load(str(tiny_llama), device="cpu").model.to(torch.bfloat16)
        spec.apply(fresh, spec.resolve({"scheme": "per-channel"}), ctx)


def test_prune_heads_that_do_not_divide_hidden_export_and_reload(tmp_path):
    """Llama-3.1-8B loses 8 of 32 heads to a 25 % cut: 4096 / 24 is no integer and transformers refuses to save
    that config. The export keeps the original counts on disk and the loader sets the real ones."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.fixtures.tiny import demo_tokenizer
    from workbench.core import pipeline
    from workbench.core.export import load_artifact

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=30522, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=4, head_dim=8, tie_word_embeddings=False,
                      pad_token_id=0, bos_token_id=101, eos_token_id=102)
    folder = tmp_path / "gqa"
    LlamaForCausalLM(cfg).save_pretrained(folder)
    demo_tokenizer().save_pretrained(folder)
    rep = pipeline.run(fast_recipe(str(folder), [("prune-heads", {})]), lambda *a, **k: None,
                       artifact_dir=str(tmp_path / "out"))
    assert rep["optimization_reports"][0]["heads_after"] == 6
    assert rep["export"]["verified"] and rep["export"]["format"] == "optbench-resized"
    model, _, manifest = load_artifact(tmp_path / "out")
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (6, 3)
    assert manifest["config_after_load"] == {"num_attention_heads": 6, "num_key_value_heads": 3}
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_attention_heads"] == 8


def test_exports_of_cpu_models_verify_on_the_cpu(tiny_llama):
    from workbench.core.export import _verify_device
    from workbench.core.models import load

    model = load(str(tiny_llama), device="cpu").model
    assert _verify_device(model, "cpu") == "cpu"


def test_gpu_8b_rows_merge_into_result_files(tmp_path):
    import gpu_8b

    rows = tmp_path / "rows-a.jsonl"
    lines = [
        {"section": "environment", "key": "environment", "environment": {"device_name": "X", "torch": "t"}},
        {"section": "bandwidth", "key": "bandwidth", "copy_bandwidth_Bps": 4.0e12},
        {"section": "opt", "key": "opt:bf16", "opt": "bf16", "ok": False, "error": "InputError: no"},
        {"section": "opt", "key": "opt:bf16", "opt": "bf16", "ok": True, "apply_seconds": 0.1,
         "apply_peak_mib": 10.0, "weights_baseline_mib": 5.0, "weights_optimized_mib": 5.0, "apply_peak_ratio": 1.0,
         "export_verified": True, "export": {"verified": True}, "export_seconds": 1.0,
         "baseline_decode_tok_s": 1.0, "optimized_decode_tok_s": 2.0, "optimized_peak_mib": 6.0,
         "estimate_mb": 6.6, "estimate_error": 0.1},
    ]
    rows.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    merged, env = gpu_8b.read_rows([str(rows)])
    assert env["device_name"] == "X" and len([r for r in merged if r["section"] == "opt"]) == 1  # later row wins
    gpu_8b.write_results(merged, env, tmp_path, "out")
    md = (tmp_path / "out.md").read_text()
    assert "| bf16 | yes |" in md and "+10 %" in md and "4.00 TB/s" in md


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_int8_selective_on_gpu_keeps_device_memory_near_the_model(tiny_llama):
    import torchao  # noqa: F401  (pinned: a broken install must fail, not skip)
    from workbench.core import optimizations
    from workbench.core.measure.memory import model_size_bytes
    from workbench.core.models import load
    from workbench.core.optimizations.context import ApplyContext

    loaded = load(str(tiny_llama), device="cuda")
    loaded.model.to(torch.bfloat16)
    base = model_size_bytes(loaded.model)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    spec = optimizations.get("int8-selective")
    ctx = ApplyContext(device="cuda", task="causal-lm", tokenizer=loaded.tokenizer)
    spec.apply(loaded.model, spec.resolve({"scheme": "torchao", "calib_samples": 4}), ctx)
    after = model_size_bytes(loaded.model)
    assert torch.cuda.max_memory_allocated() < 1.25 * (base + after) + 64 * 2**20  # + calibration activations


def test_fused_projections_export_is_checked_against_the_plain_layers(tiny_llama, tmp_path):
    """Verification compares the reload with what the saved weights compute; the fused runtime's own deviation from
    that (rounding of one GEMM vs three) is reported beside it, not mistaken for a bad export."""
    from workbench.core import export
    from workbench.core.optimizations.fastgen import fuse_projections, plain_forward
    from workbench.core.models import load

    loaded = load(str(tiny_llama), device="cpu")
    fuse_projections(loaded.model)
    ids = torch.tensor([[101, 2000, 2001, 2002, 102]])
    fused_fwds = [m for m in loaded.model.modules() if "forward" in vars(m)]
    with plain_forward(loaded.model) as swapped:
        assert swapped and not any("forward" in vars(m) for m in fused_fwds)
        plain = loaded.model(input_ids=ids).logits
    assert all("forward" in vars(m) for m in fused_fwds)  # restored
    assert torch.allclose(plain, loaded.model(input_ids=ids).logits, atol=1e-4)
    check = export.save(loaded.model, loaded.tokenizer, "causal-lm", tmp_path / "art", {}, [], "cpu")
    assert check["verified"] and "fused_runtime_max_rel_error" in check


def test_run_reports_the_memory_estimate_beside_the_measured_peak(tiny_llama):
    from workbench.core import pipeline

    events = []
    rep = pipeline.run(fast_recipe(str(tiny_llama), [("int8-weight-only", {})]).validate(),
                       lambda kind, **p: events.append((kind, p)))
    est = rep["memory_estimate"]
    assert rep["estimate_mb"] == est["run_peak_mb"] > 0 and rep["estimate_measured_mb"] > 0
    assert rep["estimate_error"] == pytest.approx((rep["estimate_mb"] - rep["estimate_measured_mb"])
                                                  / rep["estimate_measured_mb"])
    measured_weights = rep["optimized"]["model_size_mb"] * 1e6 / 2**20
    assert est["weights_mb"] == pytest.approx(measured_weights, rel=0.15)
    assert any(k == "progress" and p.get("stage") == "loading" and p.get("estimate_mb") for k, p in events)
    assert any(k == "log" and p["text"].startswith("memory estimate:") for k, p in events)


def test_a_recipe_that_does_not_fit_is_refused_before_loading(tiny_llama, monkeypatch):
    from workbench.core import memory_plan, models, pipeline
    from workbench.core.errors import InputError

    def no_load(*a, **k):
        raise AssertionError("loaded although the estimate does not fit")

    monkeypatch.setattr(models, "load", no_load)
    monkeypatch.setattr(memory_plan, "device_memory_mb", lambda device: 1.0)  # a 1 MB device
    with pytest.raises(InputError) as err:
        pipeline.run(fast_recipe(str(tiny_llama)).validate(), lambda *a, **k: None)
    msg = str(err.value)
    assert "\n" not in msg and "estimated peak memory" in msg and "has 1 MB" in msg
    assert "optimization int4-weight-only" in msg and "device_map balanced" in msg and err.value.param == "model"
    est = memory_plan.estimate_for(fast_recipe(str(tiny_llama)), "cpu")
    memory_plan.check_fits(est, "cuda", est["run_peak_mb"] + 1, "m")  # fits: no error
    memory_plan.check_fits(est, "cuda", 1.0, "m", device_map="balanced")  # spread by accelerate: not judged here
