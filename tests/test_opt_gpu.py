"""CUDA proofs of the catalogue (skipped without a GPU; run on the GPU machine with `pytest -m gpu`).

The CPU tests cover the logic; these prove the GPU-only paths and the combinations that only break on a GPU:
static KV cache + torch.compile(reduce-overhead) (must compile once, through transformers, and not crash with
"accessing tensor output of CUDAGraphs that has been overwritten"), CUDA-graph compile modes on encoders, torchao
kinds on CUDA, QAT, distillation in bf16, early exit, flash-attention-2 where installed, and DDP on 2 GPUs.
"""

import json
import os
import subprocess
import sys

import pytest

import torch  # a pinned dependency: a broken install must fail, not skip
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from tests.conftest import ROOT, fast_recipe  # noqa: E402
from workbench.core import optimizations, pipeline  # noqa: E402
from workbench.core.models import load  # noqa: E402
from workbench.core.optimizations.context import ApplyContext  # noqa: E402


def run(recipe, artifact=None):
    recipe.device = "cuda"
    return pipeline.run(recipe.validate(), lambda *a, **k: None, artifact_dir=artifact)


def apply(loaded, name, **params):
    spec = optimizations.get(name)
    ctx = ApplyContext("cuda", loaded.task, loaded.tokenizer)
    ctx.extra["generate_kwargs"] = loaded.generate_kwargs
    return spec.apply(loaded.model, spec.resolve(params), ctx)


@pytest.fixture(scope="module")
def llama256(tmp_path_factory):
    from tests.fixtures.tiny import build_llama

    return build_llama(tmp_path_factory.mktemp("g") / "llama256", hidden=256, inter=512)


def test_static_cache_plus_reduce_overhead_compiles_once_and_matches_eager(llama256):
    loaded = load(str(llama256), None, "cuda")
    ids = torch.arange(5, 69, device="cuda")[None]
    ref = loaded.model.generate(ids, max_new_tokens=16, min_new_tokens=16, do_sample=False)
    apply(loaded, "kv-cache", cache="static")
    rep = apply(loaded, "compile", mode="reduce-overhead").report
    assert rep["strategy"].startswith("transformers compile_config") and "forward" not in vars(loaded.model)
    for _ in range(4):  # repeated calls: the CUDA-graph replays must not hand out overwritten outputs
        out = loaded.model.generate(ids, max_new_tokens=16, min_new_tokens=16, do_sample=False,
                                    **loaded.generate_kwargs)
        assert torch.equal(out, ref)


def test_static_cache_plus_compile_through_the_pipeline(llama256):
    report = run(fast_recipe(str(llama256), [("kv-cache", {}), ("compile", {"mode": "reduce-overhead"})]))
    assert report["accuracy"]["next_token_agreement"]["value"] == 1.0
    assert report["optimized"]["cold_start_ms"] > report["optimized"]["latency_ms"]["p50"]  # compile in warm-up


def test_reduce_overhead_with_dynamic_cache_falls_back(llama256):
    loaded = load(str(llama256), None, "cuda")
    rep = apply(loaded, "compile", mode="reduce-overhead").report
    assert rep["mode_used"] == "default" and "static" in rep["note"]
    ids = torch.arange(5, 40, device="cuda")[None]
    assert loaded.model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] == ids.shape[1] + 4


def test_reduce_overhead_on_an_encoder(tiny_bert):
    report = run(fast_recipe(str(tiny_bert), [("compile", {"mode": "reduce-overhead"})]))
    assert report["accuracy"]["cosine_to_baseline"]["value"] > 0.999


@pytest.mark.parametrize("name", ["int8-weight-only", "int8-dynamic-act", "fp8-weight-only"])
def test_torchao_kinds_on_cuda_export(llama256, tmp_path, name):
    report = run(fast_recipe(str(llama256), [(name, {})]), artifact=str(tmp_path / "art"))
    assert report["optimized"]["model_size_mb"] < report["baseline"]["model_size_mb"]
    assert report["export"]["verified"], report["export"]


def test_qat_on_cuda(llama256):
    loaded = load(str(llama256), None, "cuda")
    rep = apply(loaded, "qat", steps=3, batch=2, seq_len=64).report
    assert rep["layers_quantized"] > 0 and rep["qat_heldout_error"] >= 0


def test_distill_bf16_on_cuda(llama256):
    loaded = load(str(llama256), None, "cuda")
    applied = apply(loaded, "distill", keep=1, steps=5, batch=2, seq_len=64, precision="bf16", checkpoint="none")
    student, rep = applied.model, applied.report
    assert next(student.parameters()).is_cuda and rep["steps_done"] == 5


def test_early_exit_on_cuda(tiny_bert_cls):
    report = run(fast_recipe(str(tiny_bert_cls), [("early-exit", {"threshold": 0.5})]))
    assert report["optimization_reports"][0]["runtime"]["samples"] > 0


def test_flash_attention_2_when_installed(llama256):
    pytest.importorskip("flash_attn", reason="flash-attn is not installed on this machine")
    report = run(fast_recipe(str(llama256), [("bf16", {}), ("attention", {"impl": "flash_attention_2"})]))
    assert report["optimization_reports"][1]["after"] == "flash_attention_2"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_distill_ddp_on_two_gpus(llama256, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "-m", "workbench.core.distill_run", "--model", str(llama256), "--out", str(tmp_path / "s"),
                           "--param", "steps=6", "--param", "batch=2", "--param", "seq_len=64",
                           "--param", "precision=bf16", "--param", "checkpoint=none"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc["report"]["world_size"] == 2 and doc["report"]["steps_done"] == 6


def test_recommender_estimates_on_gpu(llama256):
    from workbench.core.recipe import Recipe
    from workbench.core.recommend import Constraints, check, recommend

    rec = recommend(str(llama256), Constraints(max_drop=2.0, batch=1, seq_len=16, new_tokens=4), device="cuda")
    names = [s["name"] for s in rec["steps"]]
    assert names[0] in ("bf16", "fp16") and "graph-decode" in names
    assert rec["hardware"]["bf16_gflops"] > 1000 and rec["estimate"]["latency_ms"] > 0
    r = fast_recipe(str(llama256))
    recipe = Recipe.from_dict({**rec["recipe"], "bench": {**rec["recipe"]["bench"], "warmup": 2, "min_iters": 3,
                                                           "min_seconds": 0}, "eval": {"token_budget": 64,
                                                                                       "window": 32}})
    recipe.bench.monitor_hz = r.bench.monitor_hz
    report = run(recipe)
    chk = check(rec, report)
    weights = next(row for row in chk["rows"] if row["what"].startswith("weights"))
    assert abs(weights["error"]) < 0.1


def test_prompt_lookup_inside_graph_decode_captures_its_verify_step(llama256):
    """speculative:method=prompt-lookup + graph-decode on CUDA: the verify step compiled and captured as one CUDA
    graph, tokens equal to eager greedy decoding in fp32 on a repeating prompt (drafts accepted), counts consistent."""
    from workbench.core.optimizations.spec_lookup import LookupGreedy
    from workbench.core.optimizations.speculative import _Stats

    loaded = load(str(llama256), None, "cuda")
    stats = _Stats()
    gen = LookupGreedy(loaded.model, 1, 256, 4, 3, stats=stats, mode="graph")
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 1997, 1996, 2524, 1012] * 6], device="cuda")
    ref = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=48, min_new_tokens=48,
                                do_sample=False, pad_token_id=0)
    for _ in range(2):  # the second call replays the captured graph
        assert torch.equal(gen.generate(ids, 48), ref)
    assert gen.graph is not None and stats.live["target_forwards"] < stats.live["tokens"]
    assert gen.single is not None  # rounds that propose nothing replay the one-token graph
    lookup = gen._propose
    gen._propose = lambda text: []  # a text with nothing to look up: every round one token, the model's own
    assert torch.equal(gen.generate(ids, 48), ref)
    gen._propose = lookup


def test_decomposed_verify_attention_inside_captured_lookup_rounds(llama256):
    """graph-decode fuse=true + verify_attention=decomposed on CUDA: the verify step (K + 1 query positions through
    ``verify_attention``) and the one-token step compiled and captured; tokens equal to eager greedy decoding in
    fp32 on a repeating prompt, with drafts accepted."""
    from workbench.core.optimizations import fastgen
    from workbench.core.optimizations.spec_lookup import LookupGreedy
    from workbench.core.optimizations.speculative import _Stats

    loaded = load(str(llama256), None, "cuda")
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 1997, 1996, 2524, 1012] * 6], device="cuda")
    ref = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=48, min_new_tokens=48,
                                do_sample=False, pad_token_id=0)
    from transformers import AttentionInterface

    stats = _Stats()
    gen = LookupGreedy(loaded.model, 1, 256, 4, 3, stats=stats, mode="graph", fuse=True,
                       verify_attention="decomposed")
    assert loaded.model.model.layers[0].self_attn.config._attn_implementation == fastgen.VERIFY_ATTENTION
    widths = []

    def spy(module, query, *a, **kw):  # runs when the steps are traced (and in eager prefills)
        widths.append(query.shape[2])
        return fastgen.verify_attention(module, query, *a, **kw)

    AttentionInterface.register(fastgen.VERIFY_ATTENTION, spy)
    try:
        for _ in range(2):
            assert torch.equal(gen.generate(ids, 48), ref)
    finally:
        AttentionInterface.register(fastgen.VERIFY_ATTENTION, fastgen.verify_attention)
    assert 5 in widths  # the verify step's K + 1 positions went through verify_attention
    assert gen.graph is not None and gen.single is not None
    assert stats.live["target_forwards"] < stats.live["tokens"]


def test_draft_model_inside_graph_decode_captures_both_steps(llama256):
    """speculative:method=draft + graph-decode on CUDA: the draft's one-token step and the model's verify step each
    captured as a CUDA graph; tokens equal to greedy decoding in fp32, and the model drafting for itself accepted
    every draft (both caches followed the accepted sequence through the captured steps)."""
    import copy

    from workbench.core.optimizations.spec_draft import DraftGreedy
    from workbench.core.optimizations.speculative import _Stats

    loaded = load(str(llama256), None, "cuda")
    ids = torch.tensor([[101, 7592, 2088, 2003, 1037, 11, 523, 87]], device="cuda")
    ref = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=41, min_new_tokens=41,
                                do_sample=False, pad_token_id=0)
    stats = _Stats()
    gen = DraftGreedy(loaded.model, copy.deepcopy(loaded.model), 1, 128, 4, stats=stats, mode="graph")
    for _ in range(2):  # the second call replays the captured graphs
        assert torch.equal(gen.generate(ids, 41), ref)
    assert gen.graph is not None and gen.drafter.graph is not None
    assert stats.live["acceptance_rate"] == 1.0 and stats.live["target_forwards"] == 2 * (1 + 8)


def test_a_second_fused_generator_leaves_the_first_ones_graphs_valid(llama256):
    """A captured lookup loop on a fused model, then another fused generator on the same model (what a benchmark
    does per variant) and fresh allocations over whatever memory was freed: the first loop's graphs still give
    greedy's tokens (a re-fuse once freed the weight they read)."""
    from workbench.core.optimizations.fastgen import GraphedGreedy
    from workbench.core.optimizations.spec_lookup import LookupGreedy

    loaded = load(str(llama256), None, "cuda")
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 1997, 1996, 2524, 1012] * 6], device="cuda")
    ref = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=48, min_new_tokens=48,
                                do_sample=False, pad_token_id=0)
    first = LookupGreedy(loaded.model, 1, 256, 4, 3, mode="graph", fuse=True, verify_attention="decomposed")
    assert torch.equal(first.generate(ids, 48), ref)
    second = GraphedGreedy(loaded.model, 1, 256, mode="graph", fuse=True, matmul="extern",
                           tuning="coordinate-descent")
    assert torch.equal(second.generate(ids, 48), ref)  # matmul=extern, captured, tuned: greedy's tokens
    filler = [torch.randn(p.shape, device="cuda", dtype=p.dtype) for p in loaded.model.parameters()]
    assert torch.equal(first.generate(ids, 48), ref)
    del filler


def test_triton_decode_kernel_inside_captured_steps(llama256):
    """graph-decode fuse=true + decode_kernel=triton on CUDA: the one-token attention through optbench's Triton
    kernel inside the compiled, captured step (plain graph-decode and prompt lookup's one-token rounds), tokens equal
    to eager greedy decoding in fp32; the kernel really ran (the op was called while the steps were traced)."""
    from workbench.core.optimizations import _decode_kernel
    from workbench.core.optimizations.fastgen import GraphedGreedy
    from workbench.core.optimizations.spec_lookup import LookupGreedy

    loaded = load(str(llama256), None, "cuda")
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 1997, 1996, 2524, 1012] * 6], device="cuda")
    ref = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=48, min_new_tokens=48,
                                do_sample=False, pad_token_id=0)
    calls = []
    real = _decode_kernel.kernel_attention
    _decode_kernel.kernel_attention = lambda *a: calls.append(1) or real(*a)
    try:
        gen = GraphedGreedy(loaded.model, 1, 256, mode="graph", fuse=True, decode_kernel="triton",
                            tuning="coordinate-descent")
        for _ in range(2):
            assert torch.equal(gen.generate(ids, 48), ref)
        look = LookupGreedy(loaded.model, 1, 256, 4, 3, mode="graph", fuse=True, decode_kernel="triton",
                            verify_attention="decomposed")
        for _ in range(2):
            assert torch.equal(look.generate(ids, 48), ref)
    finally:
        _decode_kernel.kernel_attention = real
    assert calls and gen.graph is not None and look.single is not None
