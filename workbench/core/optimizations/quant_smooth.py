"""W8A8 with SmoothQuant: per-channel scales ``s = max|x|^alpha / max|W|^(1 - alpha)`` move the activations'
outlier channels into the weights (folded into the RMSNorm and v_proj / up_proj weights, so nothing extra runs),
then torchao's int8 dynamic activation (per token) + int8 weight (per channel) quantization.

Calibrates block by block on text (``quant_calibrate``): each block's activation maxima come from the blocks
before it, already quantized. Runs on CPU and CUDA; exports as transformers' TorchAoConfig format (int8 weights,
the smoothing already inside the norms). Needs Llama-style decoder blocks.
"""

from __future__ import annotations

from workbench.core.errors import InputError
from workbench.core.optimizations.base import Applied, Param, WeightStorage, register
from workbench.core.optimizations.quant_calibrate import CALIB_DATA, CALIB_SAMPLES, CALIB_SEQ, calibration_batches
from workbench.core.optimizations.quant_torchao import COMMON, INT_MM_CUDA_CONFLICTS


@register(name="int8-smoothquant", summary="SmoothQuant W8A8: activation outliers smoothed into the weights, then "
          "int8 dynamic activations + int8 weights (calibrates; CPU and CUDA).",
          params=(Param("alpha", float, 0.5, "migration strength: 0 keeps the activations as they are, 1 moves "
                        "all of their range into the weights", min=0.0, max=1.0, search=(0.5,)),
                  CALIB_SAMPLES, CALIB_SEQ, CALIB_DATA),
          notes="The output head stays in full precision. Integer matmuls pay off when compute-bound (prefill, "
                "large batches); batch-1 decode is memory-bound and gains little. On CUDA it cannot be compiled "
                "(torch._int_mm needs more than 16 rows).",
          quantizes_activations=True, weights=WeightStorage("int8-dynamic-act", 1.0, bytes_per_row=4),
          cuda_conflicts=INT_MM_CUDA_CONFLICTS, **COMMON)
def apply_smoothquant(model, params: dict, ctx) -> Applied:
    import statistics

    import torch

    from workbench.core.measure.memory import model_size_bytes, tensor_bytes
    from workbench.core.optimizations import _torchao
    from workbench.core.optimizations import quant_calibrate as qc
    from workbench.core.optimizations._common import layers_path
    from workbench.core.optimizations.context import linear_modules

    _torchao.require("int8-smoothquant")
    if next(model.parameters()).dtype == torch.float16:
        raise InputError("int8-smoothquant: the model is float16; expected float32 or bfloat16 weights", param="opt")
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig

    prefix = layers_path(model)
    qc.fold_groups(model, model.get_submodule(prefix)[0])  # the layout check, before calibrating
    config = Int8DynamicActivationInt8WeightConfig()
    targets = linear_modules(model, skip_head=True)
    before = model_size_bytes(model)
    linear_before = sum(tensor_bytes(m.weight) for _, m in targets)
    batches = calibration_batches(params, ctx, "int8-smoothquant", "int8-dynamic-act (no calibration)")
    done: list[str] = []
    spread: list[float] = []  # how much the smoothing flattened each input's channel range (max/median before)

    def per_block(idx, block, stats):
        name_of = {m: n for n, m in block.named_modules()}
        for group in qc.fold_groups(model, block):
            amax = stats.absmax[name_of[group.linears[0][1]]]
            s = qc.smooth_scales(amax, [lin.weight for _, lin in group.linears], params["alpha"])
            spread.append(float(amax.max() / amax.median().clamp_min(1e-8)))
            qc.fold(group, s)
        names = {n for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)}
        done.extend(f"{prefix}.{idx}.{n}" for n in _torchao.quantize(block, config, names))

    timing = qc.calibrate_blocks(model, batches, per_block, log=ctx.log, progress=ctx.progress, absmax=True)
    modules = dict(model.named_modules())
    rep = {"config": type(config).__name__, "alpha": params["alpha"], "layers_quantized": len(done),
           "layers_skipped": sorted({n for n, _ in targets} - set(done)),
           "linear_bytes_before": linear_before,
           "linear_bytes_after": sum(tensor_bytes(modules[n].weight) for n, _ in targets),
           "bytes_before": before, "bytes_after": model_size_bytes(model),
           "activation_outlier_ratio_median": round(statistics.median(spread), 2) if spread else None, **timing}
    rep.update(_torchao.attach_export(model, config, done))
    model._optbench_int8_dynamic_act = True  # see quant_torchao.refuse_int8_dynamic_act_compile
    ctx.log(f"int8-smoothquant: {len(done)} layers in {timing['calibration_seconds']:.1f} s")
    return Applied(model, rep)
