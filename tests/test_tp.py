"""Tensor parallelism (``tp``): refusals before launching, the per-rank memory plan, and on CPU with gloo and two
processes under torchrun the launcher, rank 0's one event stream, cancel, a rank's death, greedy tokens equal to one
process's, a whole run (bench stop rule agreed across ranks) and its gathered export. The multi-GPU tests are marked
``gpu`` and need two CUDA GPUs."""

import json
import os
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, fast_recipe
from tests.fixtures.tp_jobs import TP_JOBS
from workbench.core.errors import InputError
from workbench.core.jobs.client import Job


def events_of(job, timeout=180):
    return list(job.events(timeout=timeout))


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ------------------------------------------------------------------ refusals (no processes)

def tp_recipe(ref, opts=(), tp=2, **kw):
    r = fast_recipe(ref, opts, tp=tp, **kw)
    return r


@pytest.mark.parametrize("tp", [1, 0, -2, True, 65])
def test_degree_out_of_range_is_refused(tp):
    with pytest.raises(InputError) as exc:
        tp_recipe("demo:smollm2", tp=tp).validate()
    assert exc.value.param == "tp" and "--" not in exc.value.message


def test_tp_with_device_map_or_a_named_gpu_is_refused():
    r = tp_recipe("demo:smollm2", device_map="balanced")
    r.device = "cuda"
    with pytest.raises(InputError, match="two ways to spread one model") as exc:
        r.validate()
    assert exc.value.param == "tp"
    r = tp_recipe("demo:smollm2")
    r.device = "cuda:1"
    with pytest.raises(InputError, match="GPUs 0..1") as exc:
        r.validate()
    assert exc.value.param == "tp"


def test_each_optimization_composes_or_is_refused_with_its_reason():
    from workbench.core import optimizations

    composing = {s.name for s in optimizations.all_specs() if s.tp_ok}
    assert {"bf16", "fp16", "kv-cache", "attention", "compile"} <= composing
    assert not {"int8-weight-only", "int4-weight-only", "fp8-weight-only", "int8-dynamic", "graph-decode",
                "speculative", "prune-l1", "distill", "qat"} & composing
    for spec in optimizations.all_specs():
        r = tp_recipe("demo:smollm2", [(spec.name, {})])
        if spec.tp_ok:
            continue
        with pytest.raises(InputError) as exc:
            r.validate()
        assert exc.value.param == "opt" and spec.tp_reason in exc.value.message
        assert "does not compose with tensor parallelism" in exc.value.message
        assert spec.describe()["tp_reason"] == spec.tp_reason
    ok = tp_recipe("demo:smollm2", [("bf16", {}), ("kv-cache", {}), ("compile", {})]).validate()
    assert ok.model.tp == 2


def test_heads_must_divide_by_the_degree(tiny_llama):
    from workbench.core.recipe import precheck

    assert json.loads((tiny_llama / "config.json").read_text())["num_attention_heads"] % 2 == 0
    precheck(tp_recipe(str(tiny_llama), tp=2))
    with pytest.raises(InputError) as exc:
        precheck(tp_recipe(str(tiny_llama), tp=3))
    assert exc.value.param == "tp" and "4 attention heads" in exc.value.message and ": 2, 4" in exc.value.message


def test_gpu_count_and_tune_refusals():
    from workbench.core.parallel import rules
    from workbench.core.tune.form import tune_config

    r = tp_recipe("demo:smollm2", tp=4)
    r.device = "cuda"
    with pytest.raises(InputError, match="needs 4 GPUs and 2 are visible"):
        rules.check_gpus(r, 2)
    rules.check_gpus(r, 8)
    r.device = "cpu"
    rules.check_gpus(r, 0)  # gloo processes on CPU: no GPU needed
    with pytest.raises(InputError) as exc:
        tune_config(tp_recipe("demo:smollm2"))
    assert exc.value.param == "tp"


def test_tp_is_a_model_field_saved_with_the_session(tmp_path):
    from workbench.core.recipe import Recipe
    from workbench.core.session import SessionStore

    r = tp_recipe("demo:smollm2", [("bf16", {})])
    assert r.to_dict()["model"]["tp"] == 2
    assert Recipe.from_dict(r.to_dict()).model.tp == 2
    store = SessionStore(tmp_path / "s")
    store.create("tp-run", r, {})
    assert 'tp = 2' in (tmp_path / "s" / "tp-run" / "session.toml").read_text()
    assert store.open("tp-run").recipe.model.tp == 2


def test_cli_flag_and_refusal_in_its_words(tiny_llama, workdir):
    import subprocess
    import sys

    from workbench.cli.main import build_parser
    from workbench.cli.args import recipe_from_args

    args = build_parser().parse_args(["run", "--model", str(tiny_llama), "--tp", "2", "--device", "cpu"])
    assert recipe_from_args(args).model.tp == 2
    out = subprocess.run([sys.executable, "-m", "workbench", "run", "--model", str(tiny_llama), "--tp", "2",
                          "--device", "cpu", "--opt", "int8-weight-only"], cwd=workdir, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2
    assert "--opt int8-weight-only: does not compose with tensor parallelism" in out.stderr


# ------------------------------------------------------------------ memory plan

LLAMA_70B = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=128256, hidden_size=8192,
                 intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
                 tie_word_embeddings=False, max_position_embeddings=8192, torch_dtype="bfloat16")


def gpu_estimate(folder: Path, batch=1):
    from workbench.core import recommend

    facts = recommend.model_facts(str(folder))
    hw = {"gpu": {"name": "H200", "memory_mb": 143771.0, "count": 8}}
    est = recommend.estimate(facts, [], hw, recommend.Constraints(batch=batch, seq_len=128, new_tokens=128))
    est.update(_facts=facts, _hw=hw, _c=recommend.Constraints(batch=batch, seq_len=128, new_tokens=128))
    return est


def test_memory_plan_per_rank_share_and_smallest_degree(tmp_path):
    from workbench.core import memory_plan

    folder = tmp_path / "llama70b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA_70B))
    est = gpu_estimate(folder)
    assert 130_000 < est["weights_mb"] < 136_000  # 70.6 B parameters in bf16
    for n in (2, 4, 8):
        share = memory_plan.per_rank(est, n)
        assert share["weights_mb"] == pytest.approx(est["weights_mb"] / n, rel=0.002)  # norms are replicated
        assert share["kv_cache_mb"] == pytest.approx(est["kv_cache_mb"] / n)
        assert share["run_peak_mb"] < est["run_peak_mb"] / n * 1.1
    assert memory_plan.degrees(est["_facts"], 8) == [2, 4, 8]  # 64 heads, 8 KV heads
    assert memory_plan.smallest_degree(est, 143_771) == 1  # bf16 70B fits one 141 GB H200, barely
    assert memory_plan.smallest_degree(est, 81_559) == 2  # an 80 GB GPU
    assert memory_plan.smallest_degree(est, 40_000) == 4
    assert memory_plan.smallest_degree(est, 20_000) == 8
    assert memory_plan.smallest_degree(est, 10_000, limit=8) is None
    plan = memory_plan.plan_tp(est, 2, 40_000, 8)
    assert plan["smallest_fitting_degree"] == 4
    with pytest.raises(InputError, match="expected a degree that fits: 4") as exc:
        memory_plan.check_fits_tp(plan, "cuda:0", "llama70b")
    assert exc.value.param == "tp"
    memory_plan.check_fits_tp(memory_plan.plan_tp(est, 4, 40_000, 8), "cuda:0", "llama70b")
    assert "smallest degree that fits 40000 MB per GPU: 4" in memory_plan.tp_text(plan)


# ------------------------------------------------------------------ two gloo processes under torchrun

def test_greedy_tokens_under_tp2_equal_one_process(tiny_llama):
    import torch

    from workbench.core.measure.timing import fixed_input_ids
    from workbench.core.models import load

    events = events_of(Job({"job": "tp-generate", "tp": 2, "model": str(tiny_llama)}, module=TP_JOBS))
    assert [e["type"] for e in events] == ["result", "done"]  # rank 1 said nothing: one stream, rank 0's
    assert events[-1]["ok"] is True
    got = events[0]["report"]
    assert got["world"] == 2 and len(set(got["pids"])) == 2 and got["weight_type"] == "DTensor"

    one = load(str(tiny_llama), device="cpu")
    ids = fixed_input_ids(one.tokenizer, 1, 16)
    with torch.inference_mode():
        out = one.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                 do_sample=False, pad_token_id=one.tokenizer.pad_token_id)
        logits = one.model(input_ids=ids).logits[0, -1]
    top = torch.topk(logits, 5)
    assert got["tokens"] == out[0, 16:].tolist()
    assert got["top_ids"] == top.indices.tolist()
    assert got["top_values"] == pytest.approx(top.values.tolist(), abs=1e-5)


def test_cancel_ends_every_rank_within_two_seconds():
    job = Job({"job": "tp-sleep", "tp": 2}, module=TP_JOBS)
    pids = None
    for event in job.events(timeout=120):
        if event["type"] == "result":
            pids = event["report"]["pids"]
            break
    assert pids and len(pids) == 2
    ranks = [c.pid for c in psutil.Process(job.pid).children(recursive=True)]
    assert set(pids) <= set(ranks)
    t0 = time.monotonic()
    job.cancel()
    assert time.monotonic() - t0 < 2.0
    assert all(gone(p) for p in [job.pid, *ranks])
    rest = events_of(job, timeout=10)
    assert [e["type"] for e in rest] == ["error", "done"] and rest[0]["kind"] == "cancelled"


@pytest.mark.parametrize("action,kind,words", [
    ("kill", "killed", "rank 1 of 2 was killed (SIGKILL)"),
    ("raise", "exception", "rank 1 of 2: ValueError: boom on one rank"),
])
def test_a_rank_that_dies_is_one_error_event(action, kind, words):
    job = Job({"job": "tp-die", "tp": 2, "action": action, "rank": 1}, module=TP_JOBS)
    events = events_of(job)
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == 1 and errors[0]["kind"] == kind and words in errors[0]["message"]
    assert events[-1]["type"] == "done" and events[-1]["ok"] is False
    assert [e["type"] for e in events].count("done") == 1
    assert job.proc.poll() is not None


def test_run_under_tp2_one_stream_agreed_stop_and_gathered_export(tiny_llama, tmp_path):
    """The run job itself: load split, baseline, drop-layers + bf16 + static KV cache, benchmarks capped by
    max_seconds (the stop decision must be rank 0's on both ranks, or they deadlock), the gathered export."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    recipe = fast_recipe(str(tiny_llama), [("drop-layers", {"which": "first", "keep": 1}), ("bf16", {}),
                                           ("kv-cache", {})], tp=2)
    recipe.bench.min_seconds, recipe.bench.max_seconds, recipe.bench.max_iters = 60.0, 1.0, 100000
    art = tmp_path / "export"
    job = Job({"job": "run", "recipe": recipe.validate().to_dict(), "artifact_dir": str(art)})
    assert job.tp == 2
    events = events_of(job, timeout=300)
    types = [e["type"] for e in events]
    assert types[-1] == "done" and events[-1]["ok"] is True, [e for e in events if e["type"] in ("error", "log")]
    assert "error" not in types
    results = [e["phase"] for e in events if e["type"] == "result"]
    assert results == ["baseline", "final"] and types.count("model") == 1  # one stream: rank 0's
    plan = next(e["text"] for e in events if e["type"] == "log" and "memory plan at tp 2" in e["text"])
    assert "per rank" in plan
    report = next(e["report"] for e in events if e["type"] == "result" and e["phase"] == "final")
    assert report["environment"]["tp"] == 2 and report["environment"]["tp_backend"] == "gloo"
    assert report["model"]["tp"] == 2 and report["memory_estimate"]["tp"]["tp"] == 2
    for phase in ("baseline", "optimized"):
        assert report[phase]["stopped_early"] == "max_seconds"  # agreed: both ranks stopped at the same call
        ranks = report[phase]["memory_mb"]["per_rank"]
        assert [r["rank"] for r in ranks] == [0, 1] and all(r["shard_mb"] > 0 for r in ranks)
    assert report["optimized"]["dtype"] == "bfloat16"

    ex = report["export"]
    assert ex["verified"] is True and ex["gathered_from_tp"] == 2 and ex["tp_vs_gathered_max_rel_error"] < 0.02
    assert json.loads((art / "config.json").read_text())["num_hidden_layers"] == 1
    assert "distributed_config" not in json.loads((art / "config.json").read_text())
    # one ordinary folder: full tensors equal to the source's first block and embeddings in bf16
    saved = load_file(str(art / "model.safetensors"))
    source = load_file(str(tiny_llama / "model.safetensors"))
    for name, t in source.items():
        if name.startswith("model.layers.1."):
            assert name not in saved
            continue
        assert saved[name].shape == t.shape and torch.equal(saved[name], t.to(torch.bfloat16)), name
    plain = AutoModelForCausalLM.from_pretrained(art)  # plain transformers, no tp
    ids = torch.arange(100, 132).unsqueeze(0)
    with torch.inference_mode():
        assert torch.isfinite(plain(input_ids=ids).logits).all()


# ------------------------------------------------------------------ two CUDA GPUs (NCCL)

def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.gpu
@pytest.mark.skipif(_cuda_count() < 2, reason="needs 2 CUDA GPUs")
def test_gpu_run_under_tp2_with_nccl(tiny_llama, tmp_path):
    recipe = fast_recipe(str(tiny_llama), [("bf16", {}), ("kv-cache", {"cache": "static"})], tp=2)
    recipe.device = "cuda"
    job = Job({"job": "run", "recipe": recipe.validate().to_dict(), "artifact_dir": str(tmp_path / "export")})
    events = events_of(job, timeout=600)
    assert events[-1]["type"] == "done" and events[-1]["ok"] is True, [e for e in events if e["type"] == "error"]
    report = next(e["report"] for e in events if e["type"] == "result" and e["phase"] == "final")
    assert report["environment"]["tp_backend"] == "nccl"
    assert report["environment"]["tp_devices"] == ["cuda:0", "cuda:1"]
    ranks = report["optimized"]["memory_mb"]["per_rank"]
    assert all(r["cuda_peak_allocated_mb"] > 0 for r in ranks)
    assert report["export"]["verified"] is True
    samples = [e for e in events if e["type"] == "sample"]
    assert samples and len(samples[-1]["gpus"]) >= 2  # rank 0's monitor sees every GPU


@pytest.mark.gpu
@pytest.mark.skipif(_cuda_count() < 2, reason="needs 2 CUDA GPUs")
def test_gpu_cancel_ends_every_rank():
    job = Job({"job": "tp-sleep", "tp": 2, "device": "cuda"}, module=TP_JOBS)
    for event in job.events(timeout=300):
        if event["type"] == "result":
            break
    ranks = [c.pid for c in psutil.Process(job.pid).children(recursive=True)]
    t0 = time.monotonic()
    job.cancel()
    assert time.monotonic() - t0 < 2.0 and all(gone(p) for p in [job.pid, *ranks])
