"""Distillation: layer-subset and config students, KD loss going down, loss events, mixed precision, checkpoints
and resume, time budget, export, and DDP through torchrun (gloo on CPU)."""

import json
import os
import subprocess
import sys

import pytest

import torch  # a pinned dependency: a broken install must fail, not skip

from tests.conftest import ROOT, fast_recipe  # noqa: E402
from workbench.core import optimizations, pipeline  # noqa: E402
from workbench.core.models import load  # noqa: E402
from workbench.core.optimizations.context import ApplyContext  # noqa: E402

FAST = {"batch": 2, "seq_len": 32, "log_every": 1}


@pytest.fixture(scope="module")
def llama4(tmp_path_factory):
    from tests.fixtures.tiny import build_llama

    return build_llama(tmp_path_factory.mktemp("d") / "llama4", layers=4)


def distill(path, events=None, **params):
    loaded = load(str(path), None, "cpu")
    ctx = ApplyContext("cpu", loaded.task, loaded.tokenizer,
                       progress=(lambda f, **kw: events.append(kw)) if events is not None else (lambda f, **kw: None))
    spec = optimizations.get("distill")
    applied = spec.apply(loaded.model, spec.resolve({**FAST, "checkpoint": "none", **params}), ctx)
    return applied.model, applied.report, loaded


def test_layer_subset_student_learns_from_the_teacher(llama4):
    events = []
    student, rep, loaded = distill(llama4, events, layers="0,3", steps=15, lr=3e-4, alpha=1.0, hidden_weight=1.0)
    assert rep["student_layers"] == 2 and rep["kept_layers"] == [0, 3]
    assert student.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1]  # cache slots renumbered
    assert rep["heldout_loss_after"] < rep["heldout_loss_before"]  # the KD objective went down on held-out text
    curve = rep["loss_curve"]
    assert sum(curve[-5:]) < sum(curve[:5])  # and the training loss with it
    losses = [e for e in events if "loss" in e]
    assert len(losses) == 15 and {"loss_soft", "loss_hidden"} <= set(losses[-1])
    ids = torch.arange(5, 20)[None]
    assert student.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3


def test_config_student_is_smaller_and_trains_in_bf16_and_fp16(llama4):
    student, rep, _ = distill(llama4, student="config", keep=2, hidden_size=32, heads=2, intermediate_size=64,
                              steps=2, precision="bf16")
    assert student.config.hidden_size == 32 and rep["params_student"] < rep["params_teacher"]
    assert all(p.dtype == torch.float32 for p in student.parameters())  # autocast: fp32 master weights
    _, rep16, _ = distill(llama4, steps=2, grad_accum=2, precision="fp16")
    assert rep16["steps_done"] == 2 and rep16["tokens_seen"] == 2 * 2 * 2 * 32


def test_checkpoint_resume_and_time_budget(llama4, tmp_path):
    ck = str(tmp_path / "ck")
    _, first, _ = distill(llama4, steps=3, checkpoint=ck, checkpoint_every=1)
    assert first["resumed_from_step"] is None and (tmp_path / "ck" / "state.pt").is_file()
    _, more, _ = distill(llama4, steps=5, checkpoint=ck, checkpoint_every=1)
    assert more["resumed_from_step"] == 3 and more["steps_done"] == 5
    assert len(more["loss_curve"]) == 5  # the losses of the first run were restored with the state
    _, cut, _ = distill(llama4, steps=1000, time_budget_s=0.5, checkpoint=str(tmp_path / "ck2"))
    assert cut["stopped_by"] == "time budget" and 0 < cut["steps_done"] < 1000
    _, again, _ = distill(llama4, steps=1000, time_budget_s=0.3, checkpoint=str(tmp_path / "ck2"))
    assert again["resumed_from_step"] == cut["steps_done"]


def test_encoder_distillation_with_cosine_loss(tiny_bert):
    student, rep, _ = distill(tiny_bert, keep=1, steps=3)
    assert student.config.num_hidden_layers == 1 and "hard" not in str(rep.get("loss_curve"))
    assert rep["heldout_loss_before"] >= 0


def test_distilled_student_exports_through_the_pipeline(llama4, tmp_path):
    r = fast_recipe(str(llama4), [("distill", {**FAST, "steps": 2, "keep": 2, "checkpoint": "none"})])
    report = pipeline.run(r.validate(), lambda *a, **k: None, artifact_dir=str(tmp_path / "art"))
    assert report["export"]["verified"]
    assert json.loads((tmp_path / "art" / "config.json").read_text())["num_hidden_layers"] == 2
    assert report["optimized"]["model_size_mb"] < report["baseline"]["model_size_mb"]


def test_ddp_with_torchrun_on_two_cpu_processes(tiny_llama, tmp_path):
    out = tmp_path / "student"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "-m", "workbench.core.distill_run", "--model", str(tiny_llama), "--out", str(out),
                           "--device", "cpu", "--param", "steps=3", "--param", "batch=2", "--param", "seq_len=16",
                           "--param", "checkpoint=none"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc["report"]["world_size"] == 2 and doc["report"]["steps_done"] == 3
    assert (out / "model.safetensors").is_file()
