"""How graph-decode computes a Linear layer in the compiled decode step (see fastgen.py): as a fused Triton reduction
for a single row (``gemv``), as an opaque library call (``matmul="extern"``), or as ``F.linear``."""

from __future__ import annotations


MATMULS = ("inductor", "extern")


def extern_linear():
    """``torch.ops.optbench.linear``: ``F.linear`` as a custom op, which inductor calls as it is (cuBLAS on a GPU)
    instead of lowering it. With ``coordinate_descent_tuning`` inductor rewrites every matmul with one row (the
    batch-1 decode step) as a broadcast-multiply + sum, one Triton reduction per Linear; on an H200 such reductions
    took 4.75 ms of an 8B step where cuBLAS ran the same Linears in 3.99 ms (results/kernel_probe_h200.md,
    gpu_diag_h200_llama8b_fused_cdt.json). ``matmul="extern"`` keeps the library's kernels while the rest of the
    step keeps inductor's tuned, fused ones. On an H100 the whole step was slower with it (Llama-1B fused 1.476 vs
    1.246 ms/token, 8B 7.092 vs 6.059: results/h100_2026-12-07c)."""
    import torch

    if not hasattr(torch.ops.optbench, "linear"):
        @torch.library.custom_op("optbench::linear", mutates_args=(),
                                 schema="(Tensor x, Tensor weight, Tensor? bias) -> Tensor")
        def linear(x, weight, bias):
            return torch.nn.functional.linear(x, weight, bias)

        @linear.register_fake
        def _(x, weight, bias):
            return x.new_empty((*x.shape[:-1], weight.shape[0]))

    return torch.ops.optbench.linear


def _extern_forward(self, x):
    """nn.Linear.forward through ``extern_linear`` (see there)."""
    return _linear(x, self.weight, self.bias, gemv=False, extern=True)


def use_extern(model) -> int:
    """Give every plain nn.Linear with an ordinary weight tensor the extern forward, and mark fused groups to
    compute through it too; returns how many Linear layers now do."""
    import types

    import torch

    extern_linear()  # registered here, outside any compiled region
    n = 0
    for mod in model.modules():
        if type(mod) is torch.nn.Linear and type(mod.weight.data) is torch.Tensor:
            if hasattr(mod, "_optbench_shared"):  # fused: its own forward reads the flag
                mod._optbench_extern = True
            else:
                mod.forward = types.MethodType(_extern_forward, mod)
            n += 1
    return n


def _gemv_forward(self, x):
    """nn.Linear.forward, with a single input row computed as a reduction (see the module docstring)."""
    return _linear(x, self.weight, self.bias, gemv=True)


def use_gemv(model) -> int:
    """Give every plain nn.Linear with an ordinary weight tensor the GEMV forward; returns how many."""
    import types

    import torch

    n = 0
    for mod in model.modules():
        if (type(mod) is torch.nn.Linear and type(mod.weight.data) is torch.Tensor  # not quantized subclasses
                and not hasattr(mod, "_optbench_shared")):  # fused groups already take the gemv flag
            mod.forward = types.MethodType(_gemv_forward, mod)
            n += 1
    return n


def _linear(x, weight, bias, gemv: bool, extern: bool = False):
    import torch

    if gemv and x.numel() == x.shape[-1]:
        out = (x.unsqueeze(-2) * weight).sum(-1)
        return out + bias if bias is not None else out
    if extern and type(weight) in (torch.Tensor, torch.nn.Parameter):  # quantized subclasses keep their own
        return extern_linear()(x, weight, bias)
    return torch.nn.functional.linear(x, weight, bias)
