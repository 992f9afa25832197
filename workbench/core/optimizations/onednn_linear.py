"""Linear layers on oneDNN's prepacked weights (CPU).

``F.linear`` on a CPU hands the weight to a GEMM that reorders (packs) it into the kernel's blocked layout on every
call, or, for one input row, to a GEMV. At decode time that packing is paid per token and per layer, and it is why a
speculative verify step of a few positions costs far more than a one-token step: measured on an AVX2-only AMD EPYC
(2 threads, fp32, torch 2.13.0+cpu) a 576x1536 Linear took 87 µs for 1 row and 216 µs for 4, SmolLM2's 576x49152 LM
head 9.7 ms for 1 row and 16.1 ms for 4. oneDNN can pack a weight once (``torch.ops.mkldnn._reorder_linear_weight``,
what inductor's CPU freezing and IPEX use) and run every later call on the packed copy
(``torch.ops.mkldnn._linear_pointwise``): the same shapes took 62 / 87 µs and 4.4 / 5.6 ms. Over demo:smollm2
(benchmarks/onednn_linear.py, results/onednn_linear_avx2.md) a one-token forward went from 58.0 to 43.4 ms, a
4-position verify forward from 80.0 to 48.3 ms, greedy decode from 60.8 to 44.3 ms/token.

This step packs every plain ``nn.Linear`` whose weight is an ordinary float tensor (fp32 everywhere; bf16 where oneDNN
has bf16 kernels — AVX-512 BW/VL/DQ or AVX-NE-CONVERT; elsewhere bf16 layers are left alone and reported), and a
speculative draft's too (``speculative`` runs before this stage and hands its draft on). Quantized weights (tensor
subclasses) keep their own kernels.

What does not change: the parameters (``state_dict``, export, tied embeddings: the packed copy is held beside the
module, not in it), and so the export is the model itself. What it costs: a second copy of every packed weight in
memory (the original stays for export and for the embedding it may be tied to). A layer packs again when its
weight was changed in place or replaced; with gradients enabled on a weight that needs them it computes through
``F.linear`` (the packed op has no backward).
"""

from __future__ import annotations

import weakref

from workbench.core.errors import InputError
from workbench.core.optimizations.base import Applied, register

# module -> (packed weight, the weight tensor it was packed from, that tensor's version); beside the module, so
# state_dict, deepcopy and save_pretrained never see the opaque oneDNN tensor
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _pack(module):
    import torch

    w = module.weight
    packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), None)
    _PACKED[module] = (packed, w, w._version)
    return packed


def _packed_forward(self, x):
    import torch

    w = self.weight
    if (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad)) or x.dtype != w.dtype:
        return torch.nn.functional.linear(x, w, self.bias)
    entry = _PACKED.get(self)
    packed = entry[0] if entry is not None and entry[1] is w and entry[2] == w._version else _pack(self)
    return torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "none", [], "")


def pack_linears(model) -> dict:
    """Give every eligible ``nn.Linear`` of ``model`` the packed forward. Returns counts, bytes packed, and the
    layers left alone with why."""
    import types

    import torch

    done, packed_bytes, skipped = 0, 0, {}
    for mod in model.modules():
        if type(mod) is not torch.nn.Linear:
            continue
        w = mod.weight
        if type(w.data) is not torch.Tensor:
            skipped["quantized (tensor subclass)"] = skipped.get("quantized (tensor subclass)", 0) + 1
            continue
        if w.dtype not in (torch.float32, torch.bfloat16) or w.device.type != "cpu":
            key = f"{w.dtype} on {w.device.type}"
            skipped[key] = skipped.get(key, 0) + 1
            continue
        try:
            _pack(mod)
        except RuntimeError as exc:  # e.g. bf16 on a CPU without oneDNN's bf16 kernels
            key = f"{str(w.dtype).replace('torch.', '')}: {str(exc).splitlines()[0][:120]}"
            skipped[key] = skipped.get(key, 0) + 1
            continue
        mod.forward = types.MethodType(_packed_forward, mod)
        done += 1
        packed_bytes += w.numel() * w.element_size()
    return {"packed": done, "packed_bytes": packed_bytes, "skipped": skipped}


def unpack_linears(model) -> int:
    """Back to ``nn.Linear``'s own forward (benchmarks compare both in one run). Returns how many."""
    n = 0
    for mod in model.modules():
        if getattr(vars(mod).get("forward"), "__func__", None) is _packed_forward:
            del mod.forward
            _PACKED.pop(mod, None)
            n += 1
    return n


@register(
    name="onednn-linear", family="runtime", stage="compile", devices=("cpu",),
    summary="CPU: every Linear on a weight oneDNN packed once (what inductor's freezing and IPEX do) instead of "
            "re-packed by the GEMM on every call — faster decode, and a several-token verify step that costs little "
            "more than one token.",
    conflicts={"compile": "inductor lowers the Linear layers itself (with freezing it packs them the same way); "
                          "the packed op inside a compiled graph is not verified",
               **dict.fromkeys(("onnx", "onnx-int8", "openvino", "openvino-int8"),
                               "the model then runs in ONNX Runtime / OpenVINO, not through these Linear layers")},
    exportable="yes",
    notes="The parameters are untouched, so the export is the model itself. Memory: a second copy of every packed "
          "Linear weight (the original stays for export and tied embeddings). fp32 packs on any x86 CPU; bf16 needs "
          "oneDNN's bf16 kernels (AVX-512 BW/VL/DQ or AVX-NE-CONVERT), else bf16 layers stay as they are and the "
          "report says so. A speculative draft built or loaded earlier in the recipe is packed too. Measured on an "
          "AVX2-only AMD EPYC, 2 threads, fp32 demo:smollm2: decode 60.8 -> 44.3 ms/token (1.37x), a 4-position "
          "verify forward 80.0 -> 48.3 ms (benchmarks/results/onednn_linear_avx2.md).",
    tp_reason="not verified on DTensor shards",
    extra={"copies_linear_weights": True},  # the memory estimate counts the packed copy (core/recommend.py)
)
def apply(model, params: dict, ctx) -> Applied:
    import time

    import torch

    if not torch.backends.mkldnn.is_available():
        raise InputError("onednn-linear: this torch build has no oneDNN (mkldnn); expected a CPU build with it",
                         param="opt")
    t0 = time.perf_counter()
    report = pack_linears(model)
    spec = ctx.extra.get("generate_kwargs", {}).get("optbench_speculative") or {}
    draft = spec.get("draft") if spec.get("draft") is not None else spec.get("head")
    if draft is not None:  # the speculative step's draft model (or draft head) runs beside the model
        report["draft"] = pack_linears(draft)
    if not report["packed"]:
        why = "; ".join(f"{n} {k}" for k, n in report["skipped"].items()) or "the model has no nn.Linear layers"
        raise InputError(f"onednn-linear: no Linear layer could be packed ({why}); expected fp32 or bf16 "
                         f"nn.Linear weights on the CPU", param="opt")
    report["extra_bytes"] = report["packed_bytes"] + (report.get("draft") or {}).get("packed_bytes", 0)
    report["pack_seconds"] = round(time.perf_counter() - t0, 3)
    for reason, n in report["skipped"].items():
        ctx.log(f"onednn-linear: {n} Linear layers left as they are: {reason}")
    return Applied(model, report)
