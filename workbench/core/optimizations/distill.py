"""Knowledge distillation into a smaller student: a subset of the teacher's layers, or a smaller config.

Loss per batch:  alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * hard + beta * hidden-state MSE
- causal LMs: KL over next-token distributions, hard = next-token cross-entropy on the text;
- classifiers: KL over class distributions, hard = cross-entropy against the teacher's predicted class (the training
  text has no labels);
- encoders have no output distribution: the soft term is 1 - cosine between mean-pooled embeddings (T unused) and
  there is no hard term.
Hidden MSE pairs student block j with the teacher block it was copied from (layer subsets), or spreads the student's
blocks over the teacher's (config students, same hidden size only).

Training: AdamW, gradient accumulation, fp32 / bf16 autocast / fp16 autocast with a GradScaler, gradient clipping,
a step and a wall-time budget, progress events carrying the loss (the TUI plots them), and checkpoints: an
interrupted run with the same teacher and settings resumes from its last checkpoint (more steps continue it).
Under ``torchrun`` (torch.distributed initialised) the student is wrapped in DistributedDataParallel and each rank
takes its share of the batches; rank 0 writes checkpoints (see workbench/core/distill_run.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from workbench.core.errors import InputError
from workbench.core.optimizations.base import Applied, Param, register

PARAMS = (
    Param("student", str, "layers", "layers: a subset of the teacher's blocks (weights copied); config: a smaller "
          "config of the same architecture (blocks freshly initialised)", choices=("layers", "config")),
    Param("layers", str, "", "student=layers: teacher block indices to keep, e.g. 0,2,4 (empty: `keep` blocks "
          "evenly spread)"),
    Param("keep", int, 0, "blocks in the student (0: half the teacher's)", min=0, max=100000, search=(0,)),
    Param("hidden_size", int, 0, "student=config: hidden size (0: the teacher's)", min=0, max=1_000_000),
    Param("intermediate_size", int, 0, "student=config: FFN width (0: the teacher's)", min=0, max=10_000_000),
    Param("heads", int, 0, "student=config: attention heads (0: the teacher's)", min=0, max=4096),
    Param("steps", int, 100, "optimizer steps", min=1, max=10_000_000, search=(100, 300)),
    Param("batch", int, 4, "sequences per micro-batch", min=1, max=4096),
    Param("seq_len", int, 128, "tokens per sequence", min=8, max=131072),
    Param("grad_accum", int, 1, "micro-batches per optimizer step", min=1, max=4096),
    Param("lr", float, 1e-4, "AdamW learning rate", min=1e-8, max=1.0),
    Param("alpha", float, 0.5, "weight of the soft (teacher) loss; 1 - alpha goes to the hard loss", min=0.0,
          max=1.0),
    Param("temperature", float, 2.0, "softmax temperature of the soft loss", min=0.05, max=100.0),
    Param("hidden_weight", float, 0.0, "weight of the hidden-state MSE (0: off)", min=0.0, max=1000.0),
    Param("precision", str, "fp32", "fp32; bf16 (autocast); fp16 (autocast + GradScaler)",
          choices=("fp32", "bf16", "fp16")),
    Param("time_budget_s", float, 0.0, "stop after this many seconds of training (0: no limit)", min=0.0,
          max=1e7),
    Param("checkpoint", str, "auto", "auto: a folder in optbench's cache keyed by teacher + settings; none: off; "
          "or a folder path"),
    Param("checkpoint_every", int, 50, "steps between checkpoints", min=1, max=10_000_000),
    Param("data", str, "builtin", "training text: builtin (end of the built-in text) or a .txt path"),
    Param("log_every", int, 5, "steps between loss events", min=1, max=1_000_000),
)


# ------------------------------------------------------------------ student

def build_student(teacher, params: dict, task: str):
    """(student, mapping teacher-block-index per student block or None)."""
    import copy

    import torch

    from workbench.core.models import auto_class
    from workbench.core.optimizations import _common

    n = len(_common.blocks(teacher))
    k = params["keep"] or max(1, n // 2)
    if params["student"] == "layers":
        keep = _common.parse_layers(params["layers"], n, "distill:layers") if params["layers"].strip() \
            else _common.spread(min(k, n), n)
        student = copy.deepcopy(teacher)
        _common.keep_layers(student, keep)
        return student, keep
    cfg = copy.deepcopy(teacher.config)
    cfg.num_hidden_layers = min(k, n)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = list(cfg.layer_types)[: cfg.num_hidden_layers]
    if params["hidden_size"]:
        cfg.hidden_size = params["hidden_size"]
    if params["intermediate_size"]:
        cfg.intermediate_size = params["intermediate_size"]
    if params["heads"]:
        cfg.num_attention_heads = params["heads"]
        if hasattr(cfg, "num_key_value_heads"):
            cfg.num_key_value_heads = params["heads"]
    if hasattr(cfg, "head_dim") and (params["hidden_size"] or params["heads"]):
        cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads
    if cfg.hidden_size % cfg.num_attention_heads:
        raise InputError(f"distill: hidden_size {cfg.hidden_size} is not a multiple of heads "
                         f"{cfg.num_attention_heads}", param="opt")
    dtype = _common.float_dtype(teacher)
    torch.manual_seed(0)
    student = auto_class(task).from_config(cfg, dtype=dtype)
    # copy every tensor whose name and shape match (embeddings, final norm, head when the width is unchanged)
    tstate = teacher.state_dict()
    sstate = student.state_dict()
    copied = {k2: v for k2, v in tstate.items() if k2 in sstate and sstate[k2].shape == v.shape
              and not k2.startswith(_common.layers_path(teacher) + ".")}
    student.load_state_dict(copied, strict=False)
    if getattr(cfg, "tie_word_embeddings", False):
        student.tie_weights()
    student.to(next(teacher.parameters()).device)
    return student, _common.spread(cfg.num_hidden_layers, n) if cfg.hidden_size == teacher.config.hidden_size \
        else None


# ------------------------------------------------------------------ loss

def _forward(model, task: str, batch: dict, hidden: bool):
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return model(**inputs, output_hidden_states=hidden)


def distill_loss(student_out, teacher_out, batch: dict, task: str, params: dict, mapping):
    import torch.nn.functional as F

    parts = {}
    a, temp = params["alpha"], params["temperature"]
    if task == "encoder":
        mask = batch["attention_mask"].unsqueeze(-1).float()

        def pool(h):
            return F.normalize((h.float() * mask).sum(1) / mask.sum(1).clamp_min(1e-9), dim=-1)

        parts["soft"] = 1.0 - (pool(student_out.last_hidden_state) * pool(teacher_out.last_hidden_state)).sum(-1).mean()
        total = parts["soft"]
    else:
        s = student_out.logits.float()
        t = teacher_out.logits.float()
        if task == "causal-lm":
            s_flat, t_flat = s[:, :-1].reshape(-1, s.shape[-1]), t[:, :-1].reshape(-1, t.shape[-1])
            target = batch["labels"][:, 1:].reshape(-1)
        else:
            s_flat, t_flat = s, t
            target = t.argmax(-1)
        parts["soft"] = F.kl_div(F.log_softmax(s_flat / temp, -1), F.log_softmax(t_flat / temp, -1),
                                 log_target=True, reduction="batchmean") * temp * temp
        parts["hard"] = F.cross_entropy(s_flat, target)
        total = a * parts["soft"] + (1 - a) * parts["hard"]
    if params["hidden_weight"] > 0 and mapping is not None:
        hs, ht = student_out.hidden_states, teacher_out.hidden_states
        mse = sum(F.mse_loss(hs[j + 1].float(), ht[i + 1].float()) for j, i in enumerate(mapping)) / len(mapping)
        parts["hidden"] = mse
        total = total + params["hidden_weight"] * mse
    return total, {k: float(v.detach()) for k, v in parts.items()}


# ------------------------------------------------------------------ checkpoints

def _teacher_key(teacher, params: dict, task: str) -> str:
    import torch

    h = hashlib.sha256()
    h.update(json.dumps(teacher.config.to_dict(), sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, p in list(teacher.named_parameters())[:: max(1, len(list(teacher.parameters())) // 16)]:
            h.update(name.encode())
            h.update(repr(float(p.detach().float().sum())).encode())
    ignore = {"steps", "time_budget_s", "checkpoint", "checkpoint_every", "log_every"}
    h.update(json.dumps({k: v for k, v in params.items() if k not in ignore}, sort_keys=True).encode())
    h.update(task.encode())
    return h.hexdigest()[:24]


def checkpoint_dir(teacher, params: dict, task: str) -> Path | None:
    where = params["checkpoint"].strip()
    if where.lower() in ("none", "off", ""):
        return None
    if where == "auto":
        from workbench.core.cache import cache_dir

        return cache_dir() / "distill" / _teacher_key(teacher, params, task)
    return Path(where).expanduser()


def save_checkpoint(folder: Path, student, opt, scaler, step: int, losses: list, key: str) -> None:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".state.pt.tmp-{os.getpid()}"
    torch.save({"student": student.state_dict(), "optimizer": opt.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "step": step, "losses": losses, "key": key}, tmp)
    os.replace(tmp, folder / "state.pt")


def load_checkpoint(folder: Path, key: str):
    import torch

    path = folder / "state.pt"
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a torn or foreign file: start over rather than fail
        return None
    return state if state.get("key") == key else None


# ------------------------------------------------------------------ training

def train(teacher, student, mapping, task: str, tokenizer, params: dict, device: str, log, progress,
          batches: list | None = None) -> dict:
    """Distil ``student`` toward ``teacher`` for ``params["steps"]`` steps (or its time budget). ``batches``: the
    training inputs, held-out first (the first two are never trained on), instead of the text ``params["data"]``
    names — cycled through when there are fewer than steps."""
    import contextlib
    import time

    import torch

    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if dist else 0
    world = torch.distributed.get_world_size() if dist else 1
    from workbench.core.optimizations.calibration import token_batches

    steps, accum = params["steps"], params["grad_accum"]
    heldout_n = 2
    per_rank = steps * accum
    if batches is not None:
        if len(batches) <= heldout_n:
            raise ValueError(f"distill: {len(batches)} batches given; expected more than {heldout_n} (held out)")
        all_batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    else:
        all_batches = token_batches(tokenizer, task, n_batches=per_rank * world + heldout_n, batch=params["batch"],
                                    seq_len=params["seq_len"], source=params["data"], device=device)
    heldout, train_batches = all_batches[:heldout_n], all_batches[heldout_n:][rank::world]
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(params["precision"])

    def autocast():
        return torch.autocast(device_type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()

    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    want_hidden = params["hidden_weight"] > 0 and mapping is not None

    def heldout_loss(model) -> float:
        model.eval()
        with torch.no_grad(), autocast():
            vals = [float(distill_loss(_forward(model, task, b, want_hidden), _forward(teacher, task, b, want_hidden),
                                       b, task, params, mapping)[0]) for b in heldout]
        return sum(vals) / len(vals)

    before = heldout_loss(student)
    student.train()
    for p in student.parameters():
        p.requires_grad_(True)
    model = student
    if dist:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(student, device_ids=[torch.device(device).index] if device_type == "cuda" else None)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=params["lr"])
    scaler = torch.amp.GradScaler(device_type) if params["precision"] == "fp16" else None
    folder = checkpoint_dir(teacher, params, task)
    key = _teacher_key(teacher, params, task)
    start_step, losses, resumed = 0, [], None
    if folder is not None:
        state = load_checkpoint(folder, key)
        if state is not None:
            student.load_state_dict(state["student"])
            opt.load_state_dict(state["optimizer"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            start_step, losses, resumed = int(state["step"]), list(state["losses"]), int(state["step"])
            log(f"distill: resumed from step {start_step} ({folder})")
    t0 = time.perf_counter()
    stopped = "steps"
    step = start_step
    for step in range(start_step + 1, steps + 1):
        if params["time_budget_s"] and time.perf_counter() - t0 >= params["time_budget_s"]:
            stopped, step = "time budget", step - 1
            break
        opt.zero_grad(set_to_none=True)
        parts_sum: dict = {}
        total = 0.0
        for micro in range(accum):
            b = train_batches[((step - 1) * accum + micro) % len(train_batches)]
            sync = contextlib.nullcontext() if (not dist or micro == accum - 1) else model.no_sync()
            with sync:
                with autocast():
                    with torch.no_grad():
                        t_out = _forward(teacher, task, b, want_hidden)
                    s_out = _forward(model, task, b, want_hidden)
                    loss, parts = distill_loss(s_out, t_out, b, task, params, mapping)
                loss = loss / accum
                (scaler.scale(loss) if scaler is not None else loss).backward()
            total += float(loss.detach())
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v / accum
        if dist:  # the logged loss is the global batch's, as on one device with grad_accum = world
            t = torch.tensor([total], device=device)
            torch.distributed.all_reduce(t)
            total = float(t) / world
        if scaler is not None:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        losses.append(total)
        if step % params["log_every"] == 0 or step == steps:
            progress(step / steps, step=step, steps=steps, loss=total, **{f"loss_{k}": v for k, v in parts_sum.items()})
            if rank == 0:
                log(f"distill: step {step}/{steps} loss {total:.4f} "
                    + " ".join(f"{k} {v:.4f}" for k, v in parts_sum.items()))
        if folder is not None and rank == 0 and (step % params["checkpoint_every"] == 0 or step == steps):
            save_checkpoint(folder, student, opt, scaler, step, losses, key)
    if folder is not None and rank == 0 and step > start_step and stopped != "steps":
        save_checkpoint(folder, student, opt, scaler, step, losses, key)
    if device_type == "cuda":
        torch.cuda.synchronize(device)
    train_s = time.perf_counter() - t0
    used = [train_batches[i % len(train_batches)]["input_ids"] for i in range(start_step * accum, step * accum)]
    samples = sum(int(ids.shape[0]) for ids in used) * world
    student.eval()
    for p in student.parameters():
        p.requires_grad_(False)
    after = heldout_loss(student)
    seconds = time.perf_counter() - t0
    head = losses[: max(1, len(losses) // 10)]
    tail = losses[-max(1, len(losses) // 10):]
    return {"steps_done": step, "steps": steps, "stopped_by": stopped, "resumed_from_step": resumed,
            "train_seconds": seconds, "samples_per_s": samples / train_s if train_s > 0 else None,
            "loss_first": sum(head) / len(head) if head else None,
            "loss_last": sum(tail) / len(tail) if tail else None,
            "loss_curve": losses[:: max(1, len(losses) // 100)],
            "heldout_loss_before": before,
            "heldout_loss_after": after, "world_size": world,
            "checkpoint": str(folder) if folder is not None else None,
            "tokens_seen": sum(int(ids.numel()) for ids in used) * world}


@register(
    name="distill", family="distillation", stage="train",
    tp_reason=("it trains a student in one process (or data-parallel under its own launcher, "
               "workbench.core.distill_run), not on a tensor-parallel model"),
    summary="Knowledge distillation into a smaller student (a subset of the teacher's blocks, or a smaller config): "
            "alpha*T^2*KL + (1-alpha)*hard loss, optional hidden-state MSE; checkpoints and resumes.",
    params=PARAMS,
    notes="Trains on the calibration text (end of the built-in text) or a .txt file. A few hundred CPU steps "
          "recover part of what dropping blocks costs; real recovery needs far more tokens (a GPU). Multi-GPU: "
          "torchrun --nproc_per_node N -m workbench.core.distill_run ... Memory: teacher and student are both "
          "resident (not streamed): the teacher's weights + about 4x the student's (weights, gradients and AdamW's "
          "two moments, in the student's dtype) + both models' activations for one batch; an 8B bf16 teacher "
          "keeping half its blocks (a 9 GB student) needs roughly 16 + 4 x 9 = 52 GB before activations.",
)
def apply(model, params: dict, ctx) -> Applied:
    from workbench.core.measure.memory import model_size_bytes, param_count
    from workbench.core.optimizations import _common

    if params["hidden_weight"] > 0 and params["student"] == "config" and params["hidden_size"] and \
            params["hidden_size"] != model.config.hidden_size:
        raise InputError("distill: hidden_weight needs the student's hidden size to equal the teacher's; "
                         "expected hidden_weight=0 or hidden_size=0", param="opt")
    if params["precision"] == "fp16" and ctx.device == "cpu":
        ctx.log("distill: fp16 autocast on CPU is slow on most CPUs; bf16 or fp32 are the usual choices")
    teacher = model
    n_teacher = len(_common.blocks(teacher))
    student, mapping = build_student(teacher, params, ctx.task)
    p_teacher, p_student = param_count(teacher), param_count(student)
    ctx.log(f"distill: student with {len(_common.blocks(student))} of {n_teacher} blocks, "
            f"{p_student / 1e6:.1f} M of {p_teacher / 1e6:.1f} M parameters")
    result = train(teacher, student, mapping, ctx.task, ctx.tokenizer, params, ctx.device, ctx.log, ctx.progress)
    return Applied(student, {"student": params["student"], "teacher_layers": n_teacher,
                             "student_layers": len(_common.blocks(student)), "kept_layers": mapping,
                             "params_teacher": p_teacher, "params_student": p_student,
                             "bytes_after": model_size_bytes(student), **result})
