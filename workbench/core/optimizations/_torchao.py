"""torchao plumbing shared by the quantization modules: import check, quantize a chosen set of Linear layers, and
make the result exportable through transformers' ``TorchAoConfig`` path (safetensors with torchao metadata; reloads
with ``from_pretrained`` when torchao is installed)."""

from __future__ import annotations

from workbench.core.errors import InputError

# tensor subclasses torchao's safetensors support can write (torchao.prototype.safetensors.safetensors_utils)
SERIALIZABLE = ("Float8Tensor", "Int4Tensor", "Int4TilePackedTo4dTensor", "IntxUnpackedToInt8Tensor", "Int8Tensor",
                "Int4PlainInt32Tensor")


def require(opt: str):
    try:
        import torchao  # noqa: F401
        from torchao.quantization import quantize_  # noqa: F401
    except ImportError:
        raise InputError(f"{opt}: torchao is not installed; expected `pip install torchao` "
                         f"(pip install 'optbench[quant]')", param="opt") from None


def quantize(model, config, names: set[str]) -> list[str]:
    """Quantize the Linear layers named in ``names``; return those whose weight really became a torchao tensor
    (torchao silently skips shapes it cannot handle, e.g. in_features not a multiple of the group size)."""
    import torch
    from torchao.quantization import quantize_

    quantize_(model, config, filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn in names)
    return [n for n, m in model.named_modules()
            if n in names and type(getattr(m, "weight", None)).__name__ not in ("Parameter", "Tensor", "NoneType")]


def attach_export(model, config, quantized: list[str]) -> dict:
    """Record the quantization in the model so ``save_pretrained`` writes it in transformers' torchao format.

    Returns the report keys about export: ``exportable`` "yes" when every quantized weight's tensor type has
    safetensors support, else "no" with the reason."""
    import torch

    kinds = sorted({type(model.get_submodule(n).weight).__name__ for n in quantized})
    bad = [k for k in kinds if k not in SERIALIZABLE]
    if bad:
        return {"exportable": "no", "export_note": f"torchao tensor type {', '.join(bad)} has no safetensors "
                                                   f"support in this torchao; the results stay in the session"}
    try:
        from transformers import TorchAoConfig
        from transformers.quantizers.quantizer_torchao import TorchAoHfQuantizer
    except ImportError:
        return {"exportable": "no", "export_note": "this transformers has no TorchAoConfig"}
    qset = set(quantized)
    keep = sorted(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in qset)
    qc = TorchAoConfig(quant_type=config, modules_to_not_convert=keep or None)
    model.config.quantization_config = qc
    model.hf_quantizer = TorchAoHfQuantizer(qc, pre_quantized=False)
    return {"exportable": "yes", "export_note": "transformers TorchAoConfig format (safetensors + torchao "
                                                "metadata); reload needs torchao installed",
            "tensor_types": kinds}

