"""Quantization-aware training (torchao QAT): insert fake quantization, fine-tune a few steps, convert.

The fine-tuning objective defaults to matching the fp32 model (``loss=distill``: 1 - cosine of pooled embeddings
for encoders, KL(fp32 || fake-quantized) for causal LMs and classifiers) — the same quantity the evaluation scores,
and one that needs no labels; ``loss=lm`` uses next-token cross-entropy (causal LMs). Training text comes from
core/optimizations/calibration.py (end of the built-in text, or a file). The same base config is also applied as plain
post-training quantization (PTQ) to a copy of the original, and both are scored on held-out calibration batches,
so the report says what the training bought.
"""

from __future__ import annotations

from workbench.core.errors import InputError
from workbench.core.optimizations.base import Applied, Param, register

SCHEMES = ("8da4w", "8da8w", "4w", "fp8")


def base_config(scheme: str, group_size: int):
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    if scheme == "8da4w":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(group_size))
    if scheme == "8da8w":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))
    if scheme == "4w":
        return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

    return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())


def training_loss(model, teacher, task: str, batch: dict, kind: str):
    """Differentiable objective on one batch."""
    import torch

    from workbench.core.optimizations import _common

    if kind == "lm":
        return model(**batch).loss
    with torch.no_grad():
        ref = _common.outputs(teacher, task, batch)
    got = _common.outputs(model, task, batch)
    if task == "encoder":
        return 1.0 - (ref * got).sum(-1).mean()
    return (ref.exp() * (ref - got)).sum(-1).mean()


@register(
    name="qat", family="quantization", stage="quantize", exclusive_group="weight-quantization",
    tp_reason=("it fine-tunes with fake-quantized torchao weights in one process; training under tensor parallelism "
               "is not built"),
    summary="Quantization-aware training (torchao): fake-quantize, fine-tune N steps on built-in or user text, "
            "convert; reported against post-training quantization of the same kind.",
    params=(
        Param("scheme", str, "8da4w", "8da4w: int8 dynamic activations + int4 group weights; 8da8w: int8 "
              "activations + int8 per-channel weights; 4w: int4 group weight-only; fp8: float8 dynamic (CUDA, "
              "compute capability >= 8.9)", choices=SCHEMES, search=("8da4w", "8da8w")),
        Param("group_size", int, 32, "weights per scale group (int4 schemes)", choices=(16, 32, 64, 128, 256)),
        Param("steps", int, 50, "optimizer steps", min=1, max=1_000_000, search=(20, 50, 200)),
        Param("lr", float, 1e-5, "AdamW learning rate", min=1e-8, max=1.0),
        Param("batch", int, 4, "sequences per step", min=1, max=4096),
        Param("seq_len", int, 128, "tokens per training sequence", min=8, max=32768),
        Param("loss", str, "distill", "distill: match the fp32 model (no labels needed); lm: next-token "
              "cross-entropy (causal LMs)", choices=("distill", "lm")),
        Param("data", str, "builtin", "training text: builtin (end of the built-in text) or a .txt path"),
        Param("compare_ptq", bool, True, "also quantize a copy without training and score both on held-out text"),
        Param("skip_head", bool, True, "leave the output head (lm_head / classifier) in full precision"),
    ),
    requires=("torchao",),
    conflicts={"fp16": "QAT trains from fp32 or bf16 weights; drop the fp16 cast"},
    exportable="yes",
    notes="On CPU the converted int4/int8 weights are stored unpacked in int8 (torchao 0.18): 1 byte per weight plus "
          "scales, and matmuls dequantize — expect little speedup. Exports in transformers' TorchAoConfig format.",
    cost=3.0,  # training
    quantizes_activations=True,
)
def apply(model, params: dict, ctx) -> Applied:
    import copy
    import time

    import torch

    from workbench.core.optimizations.calibration import overlap_note, token_batches
    from workbench.core.measure.memory import model_size_bytes
    from workbench.core.optimizations import _common, _torchao
    from workbench.core.optimizations.context import linear_modules

    _torchao.require("qat")
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    task, scheme = ctx.task, params["scheme"]
    if params["loss"] == "lm" and task != "causal-lm":
        raise InputError("qat:loss=lm: needs a causal LM; expected loss=distill for encoders/classifiers", param="opt")
    if scheme == "fp8":
        if not ctx.device.startswith("cuda") or torch.cuda.get_device_capability(torch.device(ctx.device)) < (8, 9):
            raise InputError("qat:scheme=fp8: needs a CUDA GPU with compute capability >= 8.9; expected "
                             "scheme=8da4w, 8da8w or 4w", param="opt")
    if next(model.parameters()).dtype == torch.float16:
        raise InputError("qat: the model is float16; expected float32 or bfloat16 weights", param="opt")
    t0 = time.perf_counter()
    names = {n for n, _ in linear_modules(model, skip_head=params["skip_head"])}
    if scheme in ("8da4w", "4w"):
        bad = sorted(n for n in names if model.get_submodule(n).in_features % params["group_size"])
        names -= set(bad)
        if bad:
            ctx.log(f"qat: {len(bad)} layer(s) whose input size is not a multiple of {params['group_size']} stay fp")
    if not names:
        raise InputError("qat: no Linear layer can take this scheme; expected a smaller group_size", param="opt")
    cfg = base_config(scheme, params["group_size"])
    heldout_n = 4
    batches = token_batches(ctx.tokenizer, task, n_batches=params["steps"] + heldout_n, batch=params["batch"],
                            seq_len=params["seq_len"], source=params["data"], device=ctx.device)
    heldout, train = batches[:heldout_n], batches[heldout_n:]
    note = overlap_note(ctx.eval_settings, task)
    if note:
        ctx.log(f"qat: {note}")
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    refs = _common.reference(teacher, task, heldout)

    def in_scope(m, fqn):
        return fqn in names

    report: dict = {"scheme": scheme, "config": type(cfg).__name__, "layers": len(names)}
    if params["compare_ptq"]:
        ptq = copy.deepcopy(teacher)
        quantize_(ptq, cfg, filter_fn=in_scope)
        report["ptq_heldout_error"] = _common.error_on(ptq, task, heldout, refs)
        del ptq

    quantize_(model, QATConfig(cfg, step="prepare"), filter_fn=in_scope)
    report["fake_quant_error_before"] = _common.error_on(model, task, heldout, refs)
    model.eval()  # no dropout: the objective is to match the fp32 model's deterministic outputs
    params_to_train = [p for p in model.parameters() if p.is_floating_point()]
    for p in params_to_train:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params_to_train, lr=params["lr"], weight_decay=0.0)
    losses = []
    every = max(1, len(train) // 20)
    for step, batch in enumerate(train, 1):
        loss = training_loss(model, teacher, task, batch, params["loss"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params_to_train, 1.0)
        opt.step()
        value = float(loss.detach())
        losses.append(value)
        if step % every == 0 or step == len(train):
            ctx.progress(step / len(train), step=step, steps=len(train), loss=value)
            ctx.log(f"qat: step {step}/{len(train)} loss {value:.5g}")
    for p in model.parameters():
        p.requires_grad_(False)
    del opt, teacher
    quantize_(model, QATConfig(cfg, step="convert"), filter_fn=in_scope)
    done = [n for n in names if type(model.get_submodule(n).weight).__name__ not in ("Parameter", "Tensor")]
    qat_err = _common.error_on(model, task, heldout, refs)
    report.update({
        "steps": len(train),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "loss_curve": losses[:: max(1, len(losses) // 50)],
        "qat_heldout_error": qat_err,
        "error_metric": _common.error_name(task),
        "layers_quantized": len(done),
        "bytes_after": model_size_bytes(model),
        "train_seconds": time.perf_counter() - t0,
    })
    if "ptq_heldout_error" in report:
        ptq_err = report["ptq_heldout_error"]
        report["qat_vs_ptq"] = ("better" if qat_err < ptq_err else "worse" if qat_err > ptq_err else "equal")
        ctx.log(f"qat: held-out {_common.error_name(task)}: PTQ {ptq_err:.4g} -> QAT {qat_err:.4g}")
    report.update(_torchao.attach_export(model, cfg, done))
    return Applied(model, report)
