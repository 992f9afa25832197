"""CUDA paths. Skipped without a GPU (CI has none); run on the lent GPU machine with `pytest -m gpu`."""

import pytest

import torch  # a pinned dependency: a broken install must fail, not skip
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from tests.conftest import fast_recipe  # noqa: E402
from workbench.core import pipeline  # noqa: E402


def run(recipe, artifact=None):
    events = []
    report = pipeline.run(recipe.validate(), lambda type_, **k: events.append((type_, k)), artifact_dir=artifact)
    return report, events


def cuda_recipe(ref, opts=()):
    r = fast_recipe(ref, opts)
    r.device = "cuda"
    return r


def test_cuda_bench_memory_and_nvml(tiny_llama):
    report, events = run(cuda_recipe(str(tiny_llama), [("bf16", {})]))
    assert report["device"] == "cuda"
    mem = report["optimized"]["memory_mb"]
    assert mem["cuda_peak_allocated"] > 0 and mem["cuda_peak_reserved"] >= mem["cuda_peak_allocated"]
    assert mem["nvml_used"] is None or mem["nvml_used"] > 0
    samples = [k for t, k in events if t == "sample"]
    assert samples and samples[-1]["gpus"], "NVML readings expected on a GPU machine"
    g = samples[-1]["gpus"][0]
    assert g["mem_total_mb"] > 1000 and g["name"]
    assert report["optimized"]["dtype"] == "bfloat16"
    assert report["environment"]["device_name"]


def test_reserved_peak_is_the_phase_own_after_a_large_free():
    """Memory freed before a phase (the float weights an in-place quantization replaced) no longer counts in that
    phase's reserved peak."""
    from workbench.core.measure import memory

    big = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")  # 256 MiB, then freed into the cache
    del big
    before = torch.cuda.memory_reserved() / 2**20  # other tests' live tensors are in here too
    assert before >= 256
    memory.cuda_reset("cuda")
    small = torch.empty(2**20, dtype=torch.uint8, device="cuda")
    assert memory.cuda_peaks("cuda")["cuda_peak_reserved"] < before - 200
    del small


def test_graph_decode_matches_generate_tokens(tiny_llama):
    from transformers import AutoModelForCausalLM

    from workbench.core.optimizations.fastgen import GraphedGreedy

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).cuda().eval()
    ids = torch.randint(1000, 20000, (2, 24), device="cuda")
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, min_new_tokens=16,
                         do_sample=False)
    gen = GraphedGreedy(model, 2, 40, mode="graph")
    for _ in range(3):  # warm-up, recording, replay: the tokens must not change
        out = gen.generate(ids, 16)
        assert torch.equal(out, ref)


def test_graph_decode_gemv_and_tuning_keep_the_tokens(tiny_llama):
    from transformers import AutoModelForCausalLM

    from workbench.core.optimizations.fastgen import GraphedGreedy

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).cuda().eval()
    ids = torch.randint(1000, 20000, (1, 24), device="cuda")
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, min_new_tokens=16,
                         do_sample=False)
    gen = GraphedGreedy(model, 1, 40, mode="graph", tuning="coordinate-descent", gemv=True)
    for _ in range(2):
        assert torch.equal(gen.generate(ids, 16), ref)
    assert gen.graph is not None


@pytest.mark.parametrize("batch,options", [(1, {"fuse": True, "gemv": True, "tuning": "coordinate-descent"}),
                                           (2, {"fuse": True})])
def test_graph_decode_fused_keeps_the_tokens_and_the_weights(tiny_llama, batch, options):
    from transformers import AutoModelForCausalLM

    from workbench.core.optimizations.fastgen import GraphedGreedy
    from workbench.core.measure.memory import model_size_bytes

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).cuda().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    size = model_size_bytes(model)
    ids = torch.randint(1000, 20000, (batch, 24), device="cuda")
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, min_new_tokens=16,
                         do_sample=False)
    gen = GraphedGreedy(model, batch, 40, mode="graph", **options)
    for _ in range(2):
        assert torch.equal(gen.generate(ids, 16), ref)
    assert gen.graph is not None
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    assert model_size_bytes(model) == size  # the fused weight is the parameters' storage, not a copy


def test_graph_decode_runs_in_pipeline_and_exports(tiny_llama, tmp_path):
    report, _ = run(cuda_recipe(str(tiny_llama), [("bf16", {}), ("graph-decode", {})]),
                    artifact=str(tmp_path / "art"))
    assert report["optimized"]["decode_ms_per_token"]["count"] >= 2
    assert report["export"]["verified"]


def test_export_reload_on_cuda(tiny_bert, tmp_path):
    report, _ = run(cuda_recipe(str(tiny_bert), [("fp16", {})]), artifact=str(tmp_path / "art"))
    assert report["export"]["verified"]
    assert report["accuracy"]["cosine_to_baseline"]["value"] > 0.99


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_device_map_spreads_a_model_over_two_gpus(tmp_path):
    from tests.fixtures.tiny import build_llama

    model_dir = build_llama(tmp_path / "m", layers=8, hidden=512, heads=8, inter=1376)  # ~160 MB: worth splitting
    r = cuda_recipe(str(model_dir), [("bf16", {}), ("attention", {"impl": "sdpa"})])
    r.model.device_map = "balanced"
    report, events = run(r)
    placement = report["model"]["placement"]
    assert placement and set(placement) == {"cuda:0", "cuda:1"}, placement
    per = report["optimized"]["memory_mb"]["cuda_peak_allocated_per_device"]
    assert per["cuda:0"] > 0 and per["cuda:1"] > 0
    samples = [k for t, k in events if t == "sample"]
    assert len(samples[-1]["gpus"]) >= 2
    assert report["optimized"]["decode_ms_per_token"]["p50"] > 0
