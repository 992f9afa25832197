"""The compressed-tensors export, the checkpoint format vLLM serves (and transformers loads with the
``compressed-tensors`` package installed): int4 weight-only as W4A16 ``pack-quantized``, int8 weight-only as W8A16
``pack-quantized``. Not W8A8: a W8A8 ``int-quantized`` folder of int8-dynamic-act reloaded in transformers 5.24 +
compressed-tensors 0.20.1 on CPU differed from the in-memory model by 12-18 % of the largest logit on demo:smollm2
(its activation quantization is not torchao's), so the verification refused it; it is not offered.

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


def require(opt: str, params: dict) -> None:
    """With ``export=compressed-tensors`` in ``params``: the package must be importable (said before quantizing)."""
    if params.get("export") != FORMAT_CT:
        return
    try:
        import compressed_tensors  # noqa: F401
    except ImportError:
        raise InputError(f"{opt}:export=compressed-tensors: the compressed-tensors package is not "
                         "installed; expected `pip install compressed-tensors` (scripts/setup.sh installs it)",
                         param="opt") from None


def _group(weight) -> int:
    return int(weight.block_size[-1])


def _scheme_of(weight) -> tuple[str, str] | None:
    """(scheme name, compressed-tensors format) of a torchao weight this export can hold, or None."""
    kind = type(weight).__name__
    if kind == INTX and int(weight.qdata.min()) >= -8 and int(weight.qdata.max()) <= 7:
        return "W4A16", "pack-quantized"
    if kind == "Int8Tensor" and getattr(weight, "act_quant_kwargs", None) is None \
            and getattr(weight, "act_pre_scale", None) is None:
        return "W8A16", "pack-quantized"
    return None


def _scheme(name: str, group: int):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    if name == "W4A16":
        weights = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=group)
        return QuantizationScheme(targets=["Linear"], weights=weights)
    weights = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="channel")
    return QuantizationScheme(targets=["Linear"], weights=weights)


def save(model, out: Path) -> dict:
    """Write ``model`` to ``out`` as a compressed-tensors folder (config.json, model.safetensors,
    generation_config.json): its quantized Linears, all of one scheme — W4A16 (int4 groups, symmetric) or W8A16
    (int8 per channel) — the rest as stored.
    Returns what was written."""
    import torch
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import save_file

    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    kinds = {n: _scheme_of(m.weight) for n, m in linears.items()  # the torchao-quantized ones
             if type(m.weight).__name__ not in ("Parameter", "Tensor")}
    quantized = {n: linears[n] for n, k in kinds.items() if k is not None}
    schemes = {k for k in kinds.values()}
    if not quantized or None in schemes or len(schemes) != 1:
        raise InputError(f"{FORMAT_CT}: expected quantized layers of one scheme (int4 weight-only symmetric or int8 "
                         f"weight-only); found {sorted(str(k) for k in schemes)}")
    (scheme_name, fmt), = schemes
    groups = {_group(m.weight) for m in quantized.values()} if scheme_name == "W4A16" else {0}
    if len(groups) != 1:
        raise InputError(f"{FORMAT_CT}: the int4 layers have group sizes {sorted(groups)}; expected one")
    if any(bool(m.weight.zero_point.any()) for m in quantized.values()):
        raise InputError(f"{FORMAT_CT}: the quantized layers have zero points; expected the symmetric grid "
                         f"(export=compressed-tensors quantizes on it)")
    group = groups.pop()
    scheme = _scheme(scheme_name, group)
    compressor = BaseCompressor.load_from_registry(fmt)
    tensors: dict = {}
    for name, m in quantized.items():
        w = m.weight
        scale = w.scale.to(w.dtype)
        per = group if scheme_name == "W4A16" else w.qdata.shape[1]
        dense = (w.qdata.to(torch.float32) * scale.to(torch.float32).repeat_interleave(per, dim=1)).to(w.dtype)
        for key, value in compressor.compress({"weight": dense, "weight_scale": scale}, scheme).items():
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
    qc = QuantizationConfig(config_groups={"group_0": scheme}, format=fmt, quantization_status="compressed",
                            ignore=sorted(set(linears) - set(quantized)))
    config["quantization_config"] = {**qc.model_dump(mode="json"), "quant_method": FORMAT_CT}
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    return {"scheme": scheme_name, "format": fmt, "layers": len(quantized), "group_size": group or None,
            "ignore": qc.ignore}


def mark(rep: dict, params: dict) -> dict:
    """An optimization's report after ``export=compressed-tensors``: what export.py writes, unless the weights
    could not be exported at all."""
    if params.get("export") == FORMAT_CT and rep.get("exportable") != "no":
        rep.update({"exportable": "custom", "export_format": FORMAT_CT,
                    "export_note": "compressed-tensors (vLLM loads it; transformers with the compressed-tensors "
                                   "package)"})
    return rep


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
