"""Dynamic INT8 quantization of Linear layers: int8 weights, activations quantized on the fly per batch."""

from __future__ import annotations

from workbench.core.errors import InputError
from workbench.core.optimizations.base import Applied, Param, WeightStorage, register

HALF = "int8-dynamic quantizes from float32 Linear layers; drop the half-precision cast"


@register(
    name="int8-dynamic", family="quantization", stage="quantize", exclusive_group="weight-quantization",
    tp_reason=("torch.ao swaps each nn.Linear for its own quantized module, which cannot take a DTensor shard (its "
               "convert step fails)"),
    summary="Dynamic INT8 quantization of Linear layers (int8 weights, per-batch int8 activations).",
    params=(
        Param("backend", str, "torch.ao", "torch.ao: quantize_dynamic (fbgemm kernels, CPU only); torchao: "
              "quantize_ with Int8DynamicActivationInt8WeightConfig", choices=("torch.ao", "torchao"),
              search=("torch.ao", "torchao")),
        Param("skip_head", bool, True, "leave the output head (lm_head / classifier) in full precision"),
    ),
    conflicts={"fp16": HALF, "bf16": HALF},
    devices=("cpu",),
    exportable="custom",
    notes="torch.ao's quantize_dynamic is deprecated upstream in favour of torchao; both are offered and measured.",
    quantizes_activations=True,
    weights=WeightStorage("int8-dynamic", 1.0),  # the estimate counts per-tensor scales: none per row
)
def apply(model, params: dict, ctx) -> Applied:
    import torch

    from workbench.core.measure.memory import model_size_bytes
    from workbench.core.optimizations.context import linear_modules

    if next(model.parameters()).dtype != torch.float32:
        raise InputError("int8-dynamic: the model is not float32; expected a float32 model (drop fp16/bf16)",
                         param="opt")
    targets = linear_modules(model, skip_head=params["skip_head"])
    names = {n for n, _ in targets}
    linear_bytes_before = sum(m.weight.numel() * m.weight.element_size() for _, m in targets)
    before = model_size_bytes(model)
    export: dict = {}
    if params["backend"] == "torch.ao":
        import warnings

        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(model, {n: torch.ao.quantization.default_dynamic_qconfig for n in names},
                             dtype=torch.qint8, inplace=True)
        from torch.ao.nn.quantized.dynamic import Linear as DynLinear

        linear_bytes_after = 0
        for n, m in model.named_modules():
            if isinstance(m, DynLinear):
                w = m.weight()
                linear_bytes_after += w.numel() + (w.q_per_channel_scales().numel() * 8
                                                   if w.qscheme() != torch.per_tensor_affine else 16)
    else:
        try:
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
        except ImportError:
            raise InputError("int8-dynamic:backend=torchao: torchao is not installed; expected "
                             "`pip install torchao` or backend=torch.ao", param="opt") from None
        from workbench.core.measure.memory import tensor_bytes
        from workbench.core.optimizations import _torchao

        config = Int8DynamicActivationInt8WeightConfig()
        done = _torchao.quantize(model, config, names)
        linear_bytes_after = sum(tensor_bytes(m.weight) for n, m in model.named_modules() if n in names)
        export = _torchao.attach_export(model, config, done)
    report = {
        "backend": params["backend"],
        "layers_quantized": len(names),
        "linear_bytes_before": linear_bytes_before,
        "linear_bytes_after": linear_bytes_after,
        "bytes_before": before,
        "bytes_after": model_size_bytes(model),
        "exportable": "custom",
    }
    if params["backend"] == "torchao":
        report.update(export)  # transformers' TorchAoConfig format
    return Applied(model, report)
