"""The compressed-tensors export: int4 weight-only as W4A16 ``pack-quantized``, the checkpoint format vLLM serves
(and transformers loads with the ``compressed-tensors`` package installed).

What is written is optbench's own quantization, code for code: every int4 Linear holds torchao's
``IntxUnpackedToInt8Tensor`` on a symmetric grid (codes in [-8, 7], one scale per group, no zero point), and
compressed-tensors' own compressor packs those codes (``PackedQuantizationCompressor.compress`` re-rounds the
dequantized weight by the same scales, which gives back the same integers). Symmetric only: with compressed-tensors
0.20.1 and transformers 5.24 an asymmetric pack-quantized checkpoint does not load in transformers (the model it
builds expects the zero points unpacked, the files hold them packed; the same as vllm-project/llm-compressor issue
1618 for llm-compressor's own asymmetric checkpoints), so ``int4-weight-only:export=compressed-tensors`` quantizes on
the symmetric grid. Linears left in float (the output head by default) are in the config's ``ignore``.
"""

from __future__ import annotations

import json
from pathlib import Path

from workbench.core.errors import InputError

FORMAT_CT = "compressed-tensors"
INTX = "IntxUnpackedToInt8Tensor"


def require() -> None:
    try:
        import compressed_tensors  # noqa: F401
    except ImportError:
        raise InputError("int4-weight-only:export=compressed-tensors: the compressed-tensors package is not "
                         "installed; expected `pip install compressed-tensors` (scripts/setup.sh installs it)",
                         param="opt") from None


def _group(weight) -> int:
    return int(weight.block_size[-1])


def save(model, out: Path) -> dict:
    """Write ``model`` (its int4 Linears as described above) to ``out`` as a compressed-tensors folder (config.json,
    model.safetensors, generation_config.json). Returns what was written (layers, group size)."""
    import torch
    from compressed_tensors.compressors import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme
    from safetensors.torch import save_file

    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    quantized = {n: m for n, m in linears.items() if type(m.weight).__name__ == INTX}
    groups = {_group(m.weight) for m in quantized.values()}
    if not quantized or len(groups) != 1:
        raise InputError(f"{FORMAT_CT}: expected int4 layers of one group size (found {len(quantized)} layers, "
                         f"group sizes {sorted(groups)})")
    if any(bool(m.weight.zero_point.any()) for m in quantized.values()):
        raise InputError(f"{FORMAT_CT}: the int4 layers have zero points; expected the symmetric grid "
                         f"(int4-weight-only:export=compressed-tensors quantizes on it)")
    group = groups.pop()
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=4, type="int", symmetric=True, strategy="group", group_size=group))
    tensors: dict = {}
    for name, m in quantized.items():
        w = m.weight
        scale = w.scale.to(w.dtype)
        codes = w.qdata.to(torch.float32)
        dense = (codes * scale.to(torch.float32).repeat_interleave(group, dim=1)).to(w.dtype)
        packed = PackedQuantizationCompressor.compress({"weight": dense, "weight_scale": scale}, scheme)
        for key, value in packed.items():
            tensors[f"{name}.{key}"] = value.detach().cpu().contiguous()
        if m.bias is not None:
            tensors[f"{name}.bias"] = m.bias.detach().cpu().contiguous()
    owned = tuple(f"{n}." for n in quantized)
    for name, p in model.state_dict().items():  # everything else as stored (norms, embeddings, float Linears)
        if not name.startswith(owned):
            tensors.setdefault(name, p.detach().cpu().contiguous())
    if getattr(model.config, "tie_word_embeddings", False):  # a tied float head is the embedding: saved once
        for name in [n for n in tensors if n.endswith("lm_head.weight")]:
            del tensors[name]
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    qc = QuantizationConfig(config_groups={"group_0": scheme}, format="pack-quantized",
                            quantization_status="compressed", ignore=sorted(set(linears) - set(quantized)))
    config["quantization_config"] = {**qc.model_dump(mode="json"), "quant_method": FORMAT_CT}
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    return {"layers": len(quantized), "group_size": group, "ignore": qc.ignore}


def load(path: Path, task: str, device: str):
    """A compressed-tensors folder through transformers (which needs the compressed-tensors package)."""
    from workbench.core.models import auto_class

    try:
        import compressed_tensors  # noqa: F401
    except ImportError:
        raise InputError(f"{path}: a compressed-tensors export; expected the compressed-tensors package "
                         f"installed to load it (`pip install compressed-tensors`)") from None
    placement = {"device_map": device} if str(device).startswith("cuda") else {}
    return auto_class(task).from_pretrained(path, dtype="auto", **placement)
