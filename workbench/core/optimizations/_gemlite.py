"""GemLite's Triton weight-only kernels (the ``gemlite`` package) for ``kernel=gemlite`` of int4-weight-only and
int8-weight-only on CUDA.

Why it is here (one H200, ``benchmarks/results/kernel_probe_h200.md``): on a Llama-3.1-8B decode step at batch 1,
torchao 0.18's int8 weight-only matmul runs 6x *slower* than bf16 while GemLite's int8 kernel is 1.47x faster;
GemLite's int4 is 1.46x (tinygemm 1.59x, so tinygemm stays int4's default).

The codes are workbench's own, so every algorithm reaches the kernel: int4 from ``quant_calibrate`` on the
tinygemm grid (W ~ (codes - 8) * s + z), which is GemLite's HQQ format (W ~ (W_q - zeros) * scales) with
zeros = 8 - z / s; int8 per output row, symmetric (torchao's int8 weight-only rule). Every format quantizes per
output row, so q/k/v and gate/up are packed as *one* kernel each (the codes' rows concatenated: quantizing the
concatenated matrix gives the same codes) and each projection returns its slice of the one output
(``GemLiteProjection``: what graph-decode's ``fuse`` does for plain weights).

Costs, said where they apply: GemLite's forward does Python work on every call (eager it is slower than bf16), so
it pays off inside graph-decode's CUDA graph; its first call per shape autotunes (seconds per shape); its packed
buffers are not a format transformers loads, so the result is not exportable.
"""

from __future__ import annotations

from collections.abc import Mapping

from workbench.core.errors import InputError
from workbench.core.optimizations import _batch_notes

# the projections that read the same input, packed as one kernel (Llama-family names)
GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
WHY_NOT_EXPORTABLE = ("GemLite's packed buffers are not a format transformers loads; the results stay in the "
                      "session (use the default kernel to export)")


def batch_note(kind: str, n_params: float) -> dict:
    """Where GemLite's ``kind`` ("int4", "int8") kernel paid, for a model of ``n_params`` (see _batch_notes)."""
    return _batch_notes.note(f"{kind}-weight-only", "gemlite", n_params)


def check(opt: str, device: str) -> None:
    """kernel=gemlite needs CUDA and an importable gemlite (with triton); refused before anything changes."""
    if not device.startswith("cuda"):
        raise InputError(f"{opt}:kernel=gemlite: GemLite's kernels are Triton on CUDA; expected device cuda, or "
                         f"the default kernel", param="opt")
    try:
        import gemlite  # noqa: F401
    except ImportError as exc:
        raise InputError(f"{opt}:kernel=gemlite: the gemlite package is not importable ({exc}); expected "
                         f"`pip install gemlite` (it needs triton)", param="opt") from None
    _hopper_configs()


# GemLite ships tuned kernel configs per GPU name and loads the one whose tag the name contains; an H200 matches
# none, so every shape would autotune (minutes at 8B). The H100's are the same architecture (sm_90).
SAME_CONFIGS = {"h200": "h100"}


def _hopper_configs() -> None:
    import os

    import gemlite
    import torch
    from gemlite.core import GemLiteLinear

    name = torch.cuda.get_device_name().lower()
    for gpu, tag in SAME_CONFIGS.items():
        path = os.path.join(os.path.dirname(gemlite.__file__), "configs", f"{tag}.json")
        if gpu in name and os.path.exists(path):
            GemLiteLinear.load_config(path)  # merges: shapes tuned since stay


def hqq_zeros(qw):
    """GemLite's zeros for a QuantWeight on the tinygemm grid: (codes - 8) * s + z == (codes - zeros) * s."""
    return 8.0 - qw.zero / qw.scale


def compact(qw):
    """A QuantWeight as it waits for packing: codes uint8 (a byte per weight, not a float), scales and zeros
    float32 (GemLite's zeros are computed from them before the cast to the model's dtype)."""
    import torch

    from workbench.core.optimizations.quant_calibrate import QuantWeight

    return QuantWeight(qw.codes.to(torch.uint8), qw.scale.float(), qw.zero.float(), qw.grid)


def int4_kernel(qw, dtype):
    import torch
    from gemlite.helper import A16W4_HQQ_INT

    return A16W4_HQQ_INT(device=qw.codes.device, dtype=dtype).from_weights(
        qw.codes.to(torch.uint8), qw.scale.to(dtype), hqq_zeros(qw).to(dtype))


def int8_codes(weight):
    """Per output row, symmetric: scale = max |w| / 127 (torchao's int8 weight-only rule); codes int8."""
    import torch

    w = weight.detach().float()
    scale = (w.abs().amax(dim=1, keepdim=True) / 127).clamp_min(1e-6)
    return torch.clamp(torch.round(w / scale), -128, 127).to(torch.int8), scale


def int8_kernel(codes, scale, dtype):
    from gemlite.helper import A16W8_INT8

    return A16W8_INT8(device=codes.device, dtype=dtype).from_weights(codes, scales=scale.to(dtype))


class _Shared:
    __slots__ = ("x", "parts")

    def __init__(self) -> None:
        self.x = self.parts = None


def _projection_class():
    import torch

    class GemLiteProjection(torch.nn.Module):
        """One projection of a packed group (a lone layer is a group of one): the first part runs the kernel on
        the input and keeps the split output; the others return their slice when called on the same input."""

        def __init__(self, kernel, sizes: list[int], index: int, shared: _Shared, in_features: int, bias):
            super().__init__()
            self.in_features, self.out_features = in_features, sizes[index]
            self.sizes, self.index, self.shared = list(sizes), index, shared
            if index == 0:
                self.kernel = kernel  # the first part owns the bytes (counted once)
            else:
                self.__dict__["_kernel"] = kernel  # a reference, not a submodule
            self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)

        def _run(self, x):
            return (self.kernel if self.index == 0 else self.__dict__["_kernel"])(x)

        def forward(self, x):
            if self.index == 0:
                out = self._run(x)
                parts = out.split(self.sizes, dim=-1) if len(self.sizes) > 1 else (out,)
                self.shared.x, self.shared.parts = x, parts
                y = parts[0]
            elif self.shared.x is x:
                y = self.shared.parts[self.index]
            else:  # called on another input: compute it
                y = self._run(x).split(self.sizes, dim=-1)[self.index]
            return y if self.bias is None else y + self.bias

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, part {self.index} of " \
                   f"{len(self.sizes)}"

    return GemLiteProjection


def _cat(items: list, kind: str):
    import torch

    if kind == "int4":
        from workbench.core.optimizations.quant_calibrate import QuantWeight

        return QuantWeight(torch.cat([q.codes for q in items]), torch.cat([q.scale for q in items]),
                           torch.cat([q.zero for q in items]), items[0].grid)
    return torch.cat([c for c, _ in items]), torch.cat([s for _, s in items])


def install(model, quantized, kind: str, dtype, make_kernel=None) -> dict:
    """Replace the Linear layers named in ``quantized`` (a mapping: name -> QuantWeight for kind "int4", name ->
    (int8 codes, scales) for "int8"; read once per layer, when its group packs) by GemLite kernels, one per q/k/v
    and gate/up group whose members are all there.
    ``make_kernel(payload, dtype)`` builds a kernel (default: GemLite's; tests pass a reference). Returns counts."""
    make = make_kernel or (int4_kernel if kind == "int4" else (lambda p, d: int8_kernel(p[0], p[1], d)))
    cls = _projection_class()
    modules = dict(model.named_modules())
    todo = dict.fromkeys(quantized)  # names only: a lazy mapping computes a layer's codes when its group packs
    fused = 0
    groups = []
    for name, mod in modules.items():
        for group in GROUPS:
            names = [f"{name}.{g}" if name else g for g in group]
            if all(n in todo for n in names) and len({modules[n].in_features for n in names}) == 1:
                groups.append(names)
                for n in names:
                    todo.pop(n)
    groups += [[n] for n in todo]
    for names in groups:
        linears = [modules[n] for n in names]
        payload = _cat([quantized[n] for n in names], kind) if len(names) > 1 else quantized[names[0]]
        kernel = make(payload, dtype)
        shared = _Shared()
        sizes = [m.out_features for m in linears]
        for i, (n, lin) in enumerate(zip(names, linears)):
            bias = None if lin.bias is None else lin.bias.detach().to(dtype)
            parent, _, child = n.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child,
                    cls(kernel, sizes, i, shared, lin.in_features, bias))
        fused += len(names) > 1
    return {"kernels": len(groups), "packed_groups": fused, "layers": len(quantized)}


class _LazyCodes(Mapping):
    """name -> a layer's codes, computed when read: ``install`` packs group by group, so at most one group's codes
    (a byte per weight before packing) exist beside the model at a time, not the whole model's."""

    def __init__(self, layers: dict, codes, kind: str) -> None:
        self.layers, self.codes, self.kind = layers, codes, kind

    def __getitem__(self, name: str):
        q = self.codes(self.layers[name].weight)
        return compact(q) if self.kind == "int4" else q

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)


def quantize(model, params: dict, kind: str, group: int | None, codes) -> dict:
    """Data-free kernel=gemlite: ``codes(weight)`` for every target Linear (a QuantWeight for "int4", (int8 codes,
    scales) for "int8"), then packed (``install``); layers whose input size ``group`` does not divide stay as
    they are. Returns the report's quantization keys."""
    from workbench.core.measure.memory import model_size_bytes, tensor_bytes
    from workbench.core.optimizations.context import linear_modules

    opt = f"{kind}-weight-only"
    targets = linear_modules(model, skip_head=params["skip_head"])
    before, size = model_size_bytes(model), _batch_notes.n_params(model)
    linear_before = sum(tensor_bytes(m.weight) for _, m in targets)
    layers, skipped = {}, []
    for name, lin in targets:
        if group and lin.in_features % group:
            skipped.append(name)
        else:
            layers[name] = lin
    if not layers:
        raise InputError(f"{opt}:group_size={group}: no layer's input size is a multiple of the group size; "
                         f"expected a group size dividing the layers' input sizes", param="opt")
    counts = install(model, _LazyCodes(layers, codes, kind), kind, next(model.parameters()).dtype)
    after = model_size_bytes(model)
    return {"config": f"GemLite A16W{kind[-1]}", "gemlite": counts, "layers_quantized": len(layers),
            "layers_skipped": skipped, "linear_bytes_before": linear_before,
            "linear_bytes_after": linear_before - (before - after), "bytes_before": before, "bytes_after": after,
            "exportable": "no", "export_note": WHY_NOT_EXPORTABLE, **batch_note(kind, size)}
