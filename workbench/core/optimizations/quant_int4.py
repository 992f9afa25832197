"""int4 weight-only quantization with a choice of how the int4 values are picked: round to nearest (rtn), HQQ
(half-quadratic optimisation of scales and zeros, no data), AWQ (activation-aware scales folded into the model)
or GPTQ (Hessian-based error compensation); the last two calibrate on text (``quant_calibrate``).

Kernels and layouts (torchao 0.18):
- CUDA: tinygemm's ``Int4TilePackedTo4dTensor`` (bf16 activations, asymmetric groups with a float zero). Every
  algorithm ends in this one layout, so speed does not depend on the algorithm.
- CPU: torchao's ``IntxUnpackedToInt8Tensor`` (int4 groups with an integer zero point, one int8 byte per weight,
  dequantized per matmul): the accuracy of int4 and an export that reloads, but not the bytes or the speed of
  packed int4; torchao 0.18 has no packed x86 int4 kernel that beats a float matmul here. rtn and hqq use
  torchao's own qparams (``hqq`` on CPU is torchao's scale-only HQQ: symmetric, no zero point); awq and gptq
  pick codes on the same asymmetric grid torchao's rtn uses (``quant_calibrate.Grid("asymi")``).

Exports are transformers' TorchAoConfig format (safetensors + torchao metadata; reloading needs torchao), or with
``export=compressed-tensors`` W4A16 pack-quantized (``core/export_ct.py``: what vLLM serves; codes on the symmetric
grid on every device, the integer layout in memory, so on CUDA it does not run the tinygemm kernel). AWQ's
scales live in the RMSNorm and v_proj / up_proj weights, which export as ordinary tensors.
"""

from __future__ import annotations

from workbench.core.errors import InputError
from workbench.core.optimizations import _batch_notes
from workbench.core.optimizations._gemlite import WHY_NOT_EXPORTABLE as GEMLITE_NOT_EXPORTABLE
from workbench.core.optimizations.base import Applied, Param, WeightStorage, register
from workbench.core.optimizations.quant_calibrate import CALIB_DATA, CALIB_SAMPLES, CALIB_SEQ, calibration_batches
from workbench.core.optimizations.quant_torchao import COMMON, EXPORTS, SKIP_HEAD, quantize_linears

ALGORITHMS = ("rtn", "hqq", "awq", "gptq", "awq-gptq")

KERNELS = ("tinygemm", "gemlite")


def _config(device: str, group: int, algorithm: str, kernel: str = "tinygemm", export: str = "torchao"):
    """The torchao config whose tensor type the result has (what transformers records for the export)."""
    import torch

    if export == "compressed-tensors":  # the integer layout on every device, symmetric (see export_ct)
        from torchao.quantization import IntxWeightOnlyConfig
        from torchao.quantization.granularity import PerGroup
        from torchao.quantization.quant_primitives import MappingType

        if algorithm == "hqq":  # torchao's scale-only HQQ: symmetric already
            return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group),
                                        intx_choose_qparams_algorithm="hqq_scale_only")
        return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group),
                                    mapping_type=MappingType.SYMMETRIC)
    if device.startswith("cuda"):
        from torchao.quantization import Int4WeightOnlyConfig

        return Int4WeightOnlyConfig(group_size=group, int4_packing_format="tile_packed_to_4d",
                                    int4_choose_qparams_algorithm="hqq" if algorithm == "hqq" else "tinygemm")
    from torchao.quantization import IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup
    from torchao.quantization.quant_primitives import MappingType

    if algorithm == "hqq":  # torchao's CPU HQQ is scale-only: symmetric
        return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group),
                                    intx_choose_qparams_algorithm="hqq_scale_only")
    # asymmetric groups (an integer zero point each): demo:smollm2 g64 RTN +29.8 % perplexity against +39.7 %
    # symmetric (AMD EPYC, 2,048 tokens), the same bytes and speed
    return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group),
                                mapping_type=MappingType.ASYMMETRIC)


def cpu_layout(algorithm: str) -> str:
    """The CPU grid of an algorithm: hqq's scale-only qparams are symmetric, the rest asymmetric (integer zero)."""
    return "sym" if algorithm == "hqq" else "asymi"


def layout(device: str, algorithm: str, export: str = "torchao") -> str:
    """The grid the codes are chosen on: symmetric for a compressed-tensors export (any device), tinygemm's
    float-zero grid on CUDA, else the CPU grid."""
    if export == "compressed-tensors":
        return "sym"
    return "asym" if device.startswith("cuda") else cpu_layout(algorithm)


def _calibrated(model, params: dict, ctx) -> dict:
    """awq / gptq: block by block on the calibration text, the block's Linears replaced by int4 tensors before
    the next block sees its outputs."""
    import statistics

    import torch

    from workbench.core.measure.memory import model_size_bytes, tensor_bytes
    from workbench.core.optimizations import _torchao
    from workbench.core.optimizations import quant_calibrate as qc
    from workbench.core.optimizations._common import layers_path
    from workbench.core.optimizations.context import linear_modules

    from workbench.core.optimizations import _gemlite

    algorithm, group = params["algorithm"], params["group_size"]
    size = _batch_notes.n_params(model)  # before packing: where GemLite paid depends on the model's size
    # GemLite's HQQ format takes a float zero per group: the tinygemm grid, on any device
    grid = qc.Grid("asym" if params["kernel"] == "gemlite" else layout(ctx.device, algorithm, params["export"]), group)
    packed: dict = {}  # kernel=gemlite: name -> codes waiting to be packed (the model computes their dequantization)

    def put(name, lin, q):
        if params["kernel"] == "gemlite":
            lin.weight.data = q.dequantize().to(lin.weight.dtype)
            packed[name] = _gemlite.compact(q)
        else:
            qc.install(lin, q)
    prefix = layers_path(model)
    if algorithm.startswith("awq"):  # the layout check, before any calibration work
        qc.fold_groups(model, model.get_submodule(prefix)[0])
    targets = linear_modules(model, skip_head=params["skip_head"])
    bad = [n for n, m in targets if m.in_features % group]
    if bad:
        raise InputError(f"int4-weight-only:group_size={group}: layer {bad[0]} has {dict(targets)[bad[0]].in_features}"
                         f" inputs, not a multiple of the group size; expected a group size dividing every layer's "
                         f"input size", param="opt")
    before = model_size_bytes(model)
    linear_before = sum(tensor_bytes(m.weight) for _, m in targets)
    batches = calibration_batches(params, ctx, f"int4-weight-only:algorithm={algorithm}",
                                  "algorithm rtn or hqq")
    ratios: list[float] = []  # per Linear: output error of what is stored against round to nearest
    done: list[str] = []
    exponents: list[float] = []

    def per_block(idx, block, stats):
        linears = {n: m for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)}
        original = {n: m.weight.detach().float().clone() for n, m in linears.items()}  # one block's worth
        scale_of = {}  # Linear name -> the AWQ scales folded into its input
        if algorithm in ("awq", "awq-gptq"):
            name_of = {m: n for n, m in linears.items()}
            for group_ in qc.fold_groups(model, block):
                x = stats.sample[name_of[group_.linears[0][1]]]
                s, a, _, _ = qc.awq_search(x, [lin.weight for _, lin in group_.linears], grid)
                qc.fold(group_, s)
                exponents.append(a)
                scale_of.update({name_of[lin]: s for _, lin in group_.linears})
            if params["awq_clip"]:
                for name, lin in linears.items():
                    if name.rsplit(".", 1)[-1] not in ("q_proj", "k_proj"):
                        x = stats.sample[name] / scale_of[name] if name in scale_of else stats.sample[name]
                        qc.apply_clip(lin, qc.clip_search(x, lin.weight, grid))
        for name, lin in linears.items():
            s = scale_of.get(name)
            if algorithm in ("gptq", "awq-gptq"):
                h = stats.h[name]
                if s is not None:  # the Linear now reads x / s: its Hessian is D^-1 H D^-1
                    h = h / s[:, None] / s[None, :]
                q = qc.gptq(lin.weight, h, grid, act_order=params["act_order"])
            else:
                q = qc.rtn(lin.weight, grid)
            # on the original inputs: the stored weight (scales undone) against round to nearest of the original
            x, w0 = stats.sample[name], original[name]
            eff = q.dequantize() if s is None else q.dequantize() / s
            base = qc.output_error(x, w0, qc.rtn(w0, grid).dequantize())
            ratios.append(qc.output_error(x, w0, eff) / base if base > 0 else 1.0)
            put(f"{prefix}.{idx}.{name}", lin, q)
            done.append(f"{prefix}.{idx}.{name}")

    timing = qc.calibrate_blocks(model, batches, per_block, log=ctx.log, progress=ctx.progress,
                                 hessian=algorithm in ("gptq", "awq-gptq"), sample_tokens=2048)
    head = [(n, m) for n, m in targets if n not in set(done)]
    for name, lin in head:  # the output head (skip_head=false) and any Linear outside the blocks: round to nearest
        put(name, lin, qc.rtn(lin.weight, grid))
        done.append(name)
    if packed:
        rep = {"config": "GemLite A16W4 (HQQ format)", "gemlite": _gemlite.install(model, packed, "int4",
                                                                                    next(model.parameters()).dtype),
               **_gemlite.batch_note("int4", size)}
    else:
        rep = {"config": type(_config(ctx.device, group, algorithm, export=params["export"])).__name__}
    after = model_size_bytes(model)
    rep.update({
        "algorithm": algorithm, "group_size": group, "layout": grid.kind,
        "layers_quantized": len(done), "layers_skipped": [],
        "round_to_nearest_layers": [n for n, _ in head],
        "linear_bytes_before": linear_before,
        "linear_bytes_after": linear_before - (before - after),  # only the Linear layers changed
        "bytes_before": before, "bytes_after": after,
        "output_error_vs_rtn_median": round(statistics.median(ratios), 4) if ratios else None,
        "output_error_vs_rtn_max": round(max(ratios), 4) if ratios else None,
        **timing,
    })
    if exponents:
        rep["awq_exponent_median"] = statistics.median(exponents)
    ctx.log(f"int4-weight-only:algorithm={algorithm}: {len(done)} layers in {timing['calibration_seconds']:.1f} s; "
            f"output error {rep['output_error_vs_rtn_median']:.2f}x round-to-nearest's (median over layers)")
    if packed:
        rep.update({"exportable": "no", "export_note": _gemlite.WHY_NOT_EXPORTABLE})
    else:
        rep.update(_torchao.attach_export(model, _config(ctx.device, group, algorithm, export=params["export"]),
                                          done))
    return rep


def hqq(weight, group: int):
    """HQQ's optimised scales and zeros (torchao's implementation, no data) on the tinygemm grid: HQQ's
    W ~ (W_q - zero) * scale is (W_q - 8) * scale + (8 - zero) * scale."""
    import torch
    from torchao.quantization.quant_primitives import _choose_qparams_and_quantize_affine_hqq

    from workbench.core.optimizations import quant_calibrate as qc

    w = weight.detach()
    q, scale, zero, _ = _choose_qparams_and_quantize_affine_hqq(
        w, nbits=4, group_size=group, axis=1, compute_dtype=torch.float32, device=str(w.device), raw_output=True)
    return qc.QuantWeight(q.float(), scale.float(), (8 - zero.float()) * scale.float(), qc.Grid("asym", group))


def _not_fp16(model) -> None:
    import torch

    if next(model.parameters()).dtype == torch.float16:
        raise InputError("int4-weight-only: the model is float16; expected float32 or bfloat16 weights", param="opt")


def _bf16_first(model, ctx) -> dict:
    """The CUDA kernels take bf16 activations: cast a float32 model first (and say so)."""
    import torch

    from workbench.core.optimizations._common import cast

    if next(model.parameters()).dtype == torch.bfloat16:
        return {}
    ctx.log("int4-weight-only: casting the model to bfloat16 first (the kernel takes bf16 activations)")
    cast(model, torch.bfloat16)
    return {"cast_to": "bfloat16"}


@register(name="int4-weight-only", summary="torchao int4 weight-only with per-group scales; round to nearest, "
          "HQQ, AWQ or GPTQ (CUDA: tinygemm kernel; CPU: accuracy and export, stored one byte per weight).",
          params=(Param("group_size", int, 128, "weights per scale/zero-point group (smaller: more accurate, "
                        "bigger)", choices=(32, 64, 128, 256), search=(64, 128)),
                  Param("algorithm", str, "rtn", "how the int4 values are chosen: rtn (round to nearest), hqq "
                        "(optimised scales/zeros, no data), awq (activation-aware scales, calibrates), gptq "
                        "(error compensation, calibrates), awq-gptq (AWQ's scales, then GPTQ)", choices=ALGORITHMS,
                        search=("rtn", "hqq", "gptq")),
                  Param("kernel", str, "tinygemm", "CUDA kernel: tinygemm (torchao's int4 matmul; exports) or "
                        "gemlite (GemLite's Triton kernels, any algorithm, q/k/v and gate/up packed as one kernel "
                        "each; not exportable; on an H200 under graph-decode: 8B 1.44x bf16 at batch 1, 1.05x at "
                        "batch 8 (tinygemm 1.51x, 1.03x); 1B slower than tinygemm at batch 1 — 1.42 vs 1.05 "
                        "ms/token — and than bf16 at batch 8)", choices=KERNELS),
                  Param("export", str, "torchao", "export format: torchao (TorchAoConfig safetensors, reloads with "
                        "torchao) or compressed-tensors (W4A16 pack-quantized, what vLLM serves; codes on the "
                        "symmetric grid and stored one byte per weight in memory, so on CUDA slower than tinygemm)",
                        choices=EXPORTS),
                  Param("awq_clip", bool, True, "awq, awq-gptq: also search each group's clipping range on the "
                        "calibration inputs (not for q/k_proj)"),
                  Param("act_order", bool, True, "gptq: quantize the inputs with the most energy first (groups "
                        "stay contiguous: their scales are fitted before the sweep)"),
                  SKIP_HEAD, CALIB_SAMPLES, CALIB_SEQ, CALIB_DATA),
          notes="On CUDA casts the model to bf16 first. Layers whose input size is not a multiple of group_size stay in "
                "bf16 (rtn, hqq) or are refused (awq, gptq). awq needs Llama-style blocks (llama, mistral, qwen2, "
                "qwen3); gptq any model whose decoder blocks are called in order. On CUDA every algorithm runs "
                "the same tinygemm kernel: fastest at batch 1-4 decode; at larger batches it can fall behind bf16. "
                "On CPU the weights are stored one byte each (torchao 0.18 has no fast packed x86 int4 kernel).",
          tune_devices=("cuda",), tune_reason="on CPU int4 is stored one byte per weight (torchao 0.18) and "
          "dequantized per matmul: no size or speed gain over int8-weight-only",
          # int4 + a bf16 scale and zero point per group (the estimate assumes group 128); the rest in bf16
          weights=WeightStorage("int4-weight-only", 0.5, bytes_per_group=4.0, float_bytes=2.0),
          unexportable_params={"kernel": {"gemlite": GEMLITE_NOT_EXPORTABLE}}, **COMMON)
def apply_int4_wo(model, params: dict, ctx) -> Applied:
    import time

    from workbench.core.optimizations.context import linear_modules

    from workbench.core import export_ct

    algorithm, kernel, export = params["algorithm"], params["kernel"], params["export"]
    if export == "compressed-tensors" and kernel == "gemlite":
        raise InputError("int4-weight-only:export=compressed-tensors: the export holds the integer layout, not "
                         "GemLite's; expected kernel=tinygemm (the default)", param="opt")
    export_ct.require("int4-weight-only", params)
    if kernel == "gemlite":
        from workbench.core.optimizations import _gemlite

        _gemlite.check("int4-weight-only", ctx.device)
    t0 = time.perf_counter()
    tinygemm = ctx.device.startswith("cuda") and kernel == "tinygemm" and export == "torchao"
    size = _batch_notes.n_params(model)
    padded = ([n for n, m in linear_modules(model, skip_head=params["skip_head"]) if m.in_features % 1024]
              if tinygemm else [])
    if kernel == "gemlite" and algorithm in ("rtn", "hqq"):
        _not_fp16(model)
        from workbench.core.optimizations import quant_calibrate as qc

        group = params["group_size"]
        rep = _bf16_first(model, ctx)
        rep.update(_gemlite.quantize(
            model, params, "int4", group,
            lambda w: qc.rtn(w, qc.Grid("asym", group)) if algorithm == "rtn" else hqq(w, group)))
        rep.update({"algorithm": algorithm, "group_size": params["group_size"], "layout": "asym"})
    elif algorithm in ("rtn", "hqq"):
        rep = quantize_linears(model, params, ctx, "int4-weight-only",
                   lambda: _config(ctx.device, params["group_size"], algorithm, kernel, export),
                   need_bf16=tinygemm)
        rep.update({"algorithm": algorithm, "group_size": params["group_size"], "kernel": kernel,
                    "layout": layout(ctx.device, algorithm, export)})
    else:
        from workbench.core.optimizations import _torchao

        _torchao.require("int4-weight-only")
        _not_fp16(model)
        rep = _bf16_first(model, ctx) if tinygemm or kernel == "gemlite" else {}
        rep.update(_calibrated(model, params, ctx))
    rep["quantize_seconds"] = round(time.perf_counter() - t0, 3)
    rep["export"], rep["kernel"] = export, kernel
    if tinygemm:
        rep.update(_batch_notes.note("int4-weight-only", "tinygemm", size, ctx.device))
    export_ct.mark(rep, params)
    if padded:
        # torchao's tile-packed int4 layout pads every layer's input size up to a multiple of 1024 (and the
        # activations with it at run time): a 256-wide layer stores as many bytes as in bf16. Say so.
        rep["padded_to_1024"] = len(padded)
        ctx.log(f"int4-weight-only: {len(padded)} layer(s) have an input size that is not a multiple of 1024; "
                f"torchao pads them to one, so small layers save little or nothing")
    return Applied(model, rep)
