"""Calibrated weight quantization: the algorithms behind ``int4-weight-only:algorithm=gptq|awq`` and
``int8-smoothquant``. Pure torch, on whatever device the model is on (CPU or CUDA).

- **Grids.** An int4 weight is stored per group of ``group`` input channels in one of these torchao layouts:
  ``asym`` — tinygemm's (CUDA ``Int4TilePackedTo4dTensor``): codes 0..15, ``w = (q - 8) * s + z`` with a float
  zero ``z`` per group; ``asymi`` — torchao's ``IntxUnpackedToInt8Tensor`` (CPU) with its ASYMMETRIC rule: codes
  -8..7, ``w = (q - z) * s`` with an integer zero point, the range widened to hold 0; ``sym`` — the same tensor
  with no zero point: ``w = q * s``.
  The algorithms below pick codes and scales on the grid the kernel will use, so what they optimise is exactly what
  runs.
- **Layer by layer.** Calibration inputs are caught at the first decoder block, then every block in turn sees the
  outputs of the blocks before it *after* they were quantized (the sequential scheme of the GPTQ paper); only one
  block's activation statistics exist at a time (a K x K Hessian per Linear of that block, not of the model).
- **GPTQ** (Frantar et al. 2022): quantize a weight column by column, spreading each column's rounding error over
  the columns not yet quantized through the inverse Hessian of the layer's inputs; group qparams are fitted when
  the sweep reaches a group (after the earlier columns' updates), without activation reordering.
- **AWQ** (Lin et al. 2023): per group of Linears that read one input (q/k/v, gate/up, o, down), search the
  exponent ``a`` of per-channel scales ``s = mean|x|^a`` that minimises the group's output error after
  ``quant(W * s) / s``; then fold ``1/s`` into the op that produces the input (the RMSNorm's weight, v_proj's or
  up_proj's output rows), so the stored model is an ordinary int4 model with no extra runtime multiply and its
  export is the plain torchao format; then AWQ's clipping search (``clip_search``; not for q/k_proj,
  whose errors the attention scores amplify).
- **SmoothQuant** (Xiao et al. 2022): ``s = max|x|^a / max|W|^(1-a)`` per input channel, folded the same way, before
  int8 dynamic activation + int8 weight quantization.

Folding needs a Llama-style block (``self_attn.{q,k,v,o}_proj``, ``mlp.{gate,up,down}_proj``,
``input_layernorm``, ``post_attention_layernorm`` with a plain ``weight * norm(x)``); ``fold_groups`` says why a
block does not qualify. o_proj is only scaled when v_proj's output feeds it one-to-one (no grouped-query sharing).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from workbench.core.errors import InputError
from workbench.core.optimizations.base import Param

# model types whose decoder blocks have the Llama layout and a norm of the form weight * normalized(x)
FOLDABLE = ("llama", "mistral", "qwen2", "qwen3", "smollm3", "olmo2")


CALIB_SAMPLES = Param("calib_samples", int, 16, "calibration windows (the methods that calibrate)", min=1, max=4096)
CALIB_SEQ = Param("calib_seq_len", int, 512, "tokens per calibration window", min=16, max=8192)
CALIB_DATA = Param("calib_data", str, "builtin", "calibration text: builtin (end of the built-in text, "
                   "away from the evaluation text) or a .txt path")


def calibration_batches(params: dict, ctx, what: str, instead: str) -> list[dict]:
    """``calib_samples`` windows of ``calib_seq_len`` tokens of the calibration text, on the model's device."""
    from workbench.core.optimizations.calibration import overlap_note, token_batches

    if ctx.task != "causal-lm" or ctx.tokenizer is None:
        raise InputError(f"{what}: calibrates a causal LM on text; this model's task is {ctx.task}; expected "
                         f"{instead}", param="opt")
    note = overlap_note(ctx.eval_settings, ctx.task)
    if note:
        ctx.warning(f"{what}: {note}")
    return token_batches(ctx.tokenizer, "causal-lm", n_batches=params["calib_samples"], batch=1,
                         seq_len=params["calib_seq_len"], source=params["calib_data"], device=ctx.device)


@dataclass(frozen=True)
class Grid:
    """An int4 quantization grid (see the module docstring)."""

    kind: str  # "asym" (tinygemm, float zero), "asymi" (intx, integer zero point) or "sym" (intx)
    group: int

    def fit(self, w):
        """Scale and zero per row of ``w`` [..., group] (float32), by min/max (round to nearest)."""
        import torch

        if self.kind == "asym":
            lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
            s = ((hi - lo) / 15).clamp_min(1e-8)
            return s, lo + 8 * s
        if self.kind == "asymi":  # torchao's ASYMMETRIC rule: the range holds 0, the zero point is an integer
            lo, hi = w.amin(-1, keepdim=True).clamp_max(0), w.amax(-1, keepdim=True).clamp_min(0)
            s = ((hi - lo) / 15).clamp_min(torch.finfo(torch.float32).eps)
            return s, torch.clamp(-8 - torch.round(lo / s), -8, 7)
        s = (w.abs().amax(-1, keepdim=True) / 7.5).clamp_min(1e-8)
        return s, None

    def codes(self, w, s, z):
        import torch

        if self.kind == "asym":
            return torch.clamp(torch.round((w - (z - 8 * s)) / s), 0, 15)
        if self.kind == "asymi":
            return torch.clamp(torch.round(w / s) + z, -8, 7)
        return torch.clamp(torch.round(w / s), -8, 7)

    def dequant(self, q, s, z):
        if self.kind == "asym":
            return (q - 8) * s + z
        return (q - z) * s if self.kind == "asymi" else q * s


@dataclass
class QuantWeight:
    """A weight on a grid: ``codes`` [N, K] (float holding integers), ``scale``/``zero`` [N, K // group]."""

    codes: object
    scale: object
    zero: object
    grid: Grid

    def dequantize(self):
        n, k = self.codes.shape
        g = self.grid.group
        q = self.codes.view(n, k // g, g)
        z = None if self.zero is None else self.zero.unsqueeze(-1)
        return self.grid.dequant(q, self.scale.unsqueeze(-1), z).view(n, k)


def rtn(weight, grid: Grid) -> QuantWeight:
    """Round to nearest with min/max qparams per group."""
    w = weight.detach().float()
    n, k = w.shape
    g = w.view(n, k // grid.group, grid.group)
    s, z = grid.fit(g)
    q = grid.codes(g, s, z)
    return QuantWeight(q.view(n, k), s.squeeze(-1), None if z is None else z.squeeze(-1), grid)


def gptq(weight, hessian, grid: Grid, percdamp: float = 0.01, block: int = 128,
         act_order: bool = False) -> QuantWeight:
    """GPTQ on one Linear weight [N, K] with the Hessian ``X^T X`` [K, K] of its inputs (float32).

    ``act_order``: sweep the columns in order of decreasing Hessian diagonal (the inputs with the most energy first,
    while the most columns are left to absorb their error), with every group's qparams fitted beforehand on the
    weight as it is ("static groups": the groups stay contiguous, as the kernel's layout needs)."""
    import torch

    w = weight.detach().float().clone()
    n, k = w.shape
    g = grid.group
    block = max(g, block // g * g)
    h = hessian.float().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(h))
    h += damp * torch.eye(k, device=h.device)
    scales = torch.zeros(n, k // g, device=w.device)
    zeros = torch.zeros(n, k // g, device=w.device) if grid.kind != "sym" else None
    perm = None
    if act_order:
        fitted = rtn(w, grid)
        scales, zeros = fitted.scale, fitted.zero
        perm = torch.argsort(torch.diag(h), descending=True)
        w, h = w[:, perm], h[perm][:, perm]
    try:
        hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except RuntimeError:  # not positive definite even damped: more damping, once
        h += 10 * damp * torch.eye(k, device=h.device)
        hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    codes = torch.zeros_like(w)
    group_of = (perm if perm is not None else torch.arange(k, device=w.device)) // g
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if perm is not None:  # static groups: this column's group's qparams
                j = int(group_of[col])
                s, z = scales[:, j:j + 1], None if zeros is None else zeros[:, j:j + 1]
            elif col % g == 0:  # fit the group's qparams on the columns as updated so far
                s, z = grid.fit(w1[:, i:i + g])
                scales[:, col // g] = s.squeeze(-1)
                if zeros is not None:
                    zeros[:, col // g] = z.squeeze(-1)
            col_w = w1[:, i:i + 1]
            q = grid.codes(col_w, s, z)
            codes[:, col] = q.squeeze(-1)
            err = (col_w - grid.dequant(q, s, z)) / h1[i, i]
            w1[:, i:] -= err @ h1[i:i + 1, i:]
            err1[:, i:i + 1] = err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    if perm is not None:
        codes = codes[:, torch.argsort(perm)]
    return QuantWeight(codes, scales, zeros, grid)


def output_error(x, weight, approx) -> float:
    """Mean squared output error of ``approx`` [N, K] against ``weight`` on inputs ``x`` [T, K]."""
    ref = x @ weight.float().t()
    return float(((x @ approx.float().t() - ref) ** 2).mean())


def awq_search(x, weights: list, grid: Grid, n_grid: int = 20) -> tuple:
    """AWQ's scale search for Linears that share the input ``x`` [T, K] (float32): returns (scales [K], exponent,
    the best loss, the loss at exponent 0 — plain round to nearest)."""
    import torch

    weights = [w.detach() for w in weights]
    mean_abs = x.abs().mean(0).clamp_min(1e-6)
    ref = torch.cat([x @ w.float().t() for w in weights], dim=1)
    losses = []
    best_s, best_a = None, 0.0
    for step in range(n_grid):  # exponent 0 gives s = 1: plain round to nearest
        a = step / n_grid
        s = mean_abs.pow(a)
        s = s / (s.max() * s.min()).sqrt()
        out = torch.cat([x @ (rtn(w.float() * s, grid).dequantize() / s).t() for w in weights], dim=1)
        losses.append(float(((out - ref) ** 2).mean()))
        if losses[-1] <= min(losses):
            best_s, best_a = s, a
    return best_s, best_a, min(losses), losses[0]


def clip_search(x, weight, grid: Grid, n_grid: int = 20, max_shrink: float = 0.5, tokens: int = 512,
                rows: int = 64):
    """AWQ's weight clipping: per output row and group, the clamp ``|w| <= m`` (``m`` from the group's max down to
    ``max_shrink`` of it) whose round-to-nearest gives the group's partial outputs on ``x`` [T, K] the least error.
    Returns the clamp bounds [N, K // group, 1]."""
    import torch

    w = weight.detach().float()
    n, k = w.shape
    g = grid.group
    groups = k // g
    xg = x[:tokens].float().reshape(-1, groups, g)
    bounds = torch.empty(n, groups, 1, device=w.device)
    for r0 in range(0, n, rows):
        wr = w[r0:r0 + rows].reshape(-1, groups, g)
        top = wr.abs().amax(-1, keepdim=True)
        ref = torch.einsum("tgc,rgc->trg", xg, wr)
        best_err = torch.full(top.shape[:2], float("inf"), device=w.device)
        best = top.clone()
        for step in range(int(max_shrink * n_grid)):
            m = top * (1 - step / n_grid)
            clipped = torch.maximum(torch.minimum(wr, m), -m)
            q = rtn(clipped.reshape(wr.shape[0], k), grid).dequantize().reshape(wr.shape)
            err = ((torch.einsum("tgc,rgc->trg", xg, q) - ref) ** 2).mean(0)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better.unsqueeze(-1), m, best)
        bounds[r0:r0 + rows] = best
    return bounds


def apply_clip(linear, bounds) -> None:
    import torch

    with torch.no_grad():
        n, k = linear.weight.shape
        w = linear.weight.view(n, bounds.shape[1], -1)
        b = bounds.to(w.dtype)
        w.copy_(torch.maximum(torch.minimum(w, b), -b))


def smooth_scales(act_absmax, weights: list, alpha: float):
    """SmoothQuant's per-channel scales for Linears sharing one input: max|x|^a / max|W|^(1-a)."""
    import torch

    w_max = torch.stack([w.detach().float().abs().amax(0) for w in weights]).amax(0).clamp_min(1e-5)
    s = act_absmax.float().clamp_min(1e-5).pow(alpha) / w_max.pow(1 - alpha)
    return s.clamp_min(1e-5)


# ------------------------------------------------------------------------------------------------ folding scales


@dataclass
class FoldGroup:
    """Linears that read one input, and the op that produces that input (where 1/s is folded)."""

    name: str  # attn-in, attn-out, mlp-in, mlp-out
    linears: list  # [(short name, nn.Linear)]
    source: object  # the norm module or the Linear whose output rows feed them
    source_kind: str  # "norm" or "rows"


def fold_groups(model, block) -> list[FoldGroup]:
    """The fold groups of one Llama-style decoder block; an InputError says why a model does not qualify."""
    mtype = getattr(model.config, "model_type", "?")
    if mtype not in FOLDABLE:
        raise InputError(f"this model ({mtype}) has no Llama-style decoder blocks to fold scales into; expected "
                         f"one of {', '.join(FOLDABLE)}", param="opt")
    try:
        att, mlp = block.self_attn, block.mlp
        q, k, v, o = att.q_proj, att.k_proj, att.v_proj, att.o_proj
        gate, up, down = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        n1, n2 = block.input_layernorm, block.post_attention_layernorm
    except AttributeError as exc:
        raise InputError(f"this model's decoder block has no {exc.name}; expected the Llama layout "
                         f"(self_attn.q/k/v/o_proj, mlp.gate/up/down_proj, two RMSNorms)", param="opt") from None
    groups = [FoldGroup("attn-in", [("q_proj", q), ("k_proj", k), ("v_proj", v)], n1, "norm"),
              FoldGroup("mlp-in", [("gate_proj", gate), ("up_proj", up)], n2, "norm"),
              FoldGroup("mlp-out", [("down_proj", down)], up, "rows")]
    if v.out_features == o.in_features:  # no grouped-query sharing: v's rows feed o's columns one to one
        groups.insert(1, FoldGroup("attn-out", [("o_proj", o)], v, "rows"))
    return groups


def fold(group: FoldGroup, s) -> None:
    """Divide the group's input by ``s`` (in its source) and multiply the Linears' columns by it: exact in float."""
    import torch

    with torch.no_grad():
        src = group.source
        if group.source_kind == "norm":
            src.weight.div_(s.to(src.weight.dtype))
            if getattr(src, "bias", None) is not None:
                src.bias.div_(s.to(src.bias.dtype))
        else:
            src.weight.div_(s.to(src.weight.dtype).unsqueeze(1))
            if src.bias is not None:
                src.bias.div_(s.to(src.bias.dtype))
        for _, lin in group.linears:
            lin.weight.mul_(s.to(lin.weight.dtype).unsqueeze(0))


# -------------------------------------------------------------------------------------------- layer by layer


class _Stop(Exception):
    pass


@dataclass
class BlockInputs:
    """What the first decoder block was called with, per calibration batch (hidden states replaced as we go)."""

    args: list = field(default_factory=list)
    kwargs: list = field(default_factory=list)


def catch_block_inputs(model, blocks, batches: list[dict]) -> BlockInputs:
    """Run the calibration batches up to the first decoder block and keep its inputs."""
    import torch

    caught = BlockInputs()

    def hook(_module, args, kwargs):
        caught.args.append(list(args))
        caught.kwargs.append({k: v for k, v in kwargs.items() if k not in ("past_key_values", "past_key_value")})
        raise _Stop

    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for batch in batches:
                try:
                    model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False)
                except _Stop:
                    pass
    finally:
        handle.remove()
    return caught


def hidden(caught: BlockInputs, i: int):
    a, kw = caught.args[i], caught.kwargs[i]
    return a[0] if a else kw["hidden_states"]


def set_hidden(caught: BlockInputs, i: int, value) -> None:
    if caught.args[i]:
        caught.args[i][0] = value
    else:
        caught.kwargs[i]["hidden_states"] = value


def run_block(block, caught: BlockInputs) -> None:
    """Forward every caught batch through ``block``; its outputs become the next block's inputs."""
    import torch

    with torch.no_grad():
        for i in range(len(caught.args)):
            out = block(*caught.args[i], **caught.kwargs[i])
            set_hidden(caught, i, out[0] if isinstance(out, (tuple, list)) else out)


class InputStats:
    """Forward hooks on Linears collecting what the algorithms need of their inputs: ``X^T X`` (GPTQ), a token
    sample (AWQ's search, error checks), the per-channel max |x| (SmoothQuant)."""

    def __init__(self, linears: dict, hessian: bool, sample_tokens: int, absmax: bool) -> None:
        self.h: dict = {}
        self.n: dict = {}
        self.sample: dict = {}
        self.absmax: dict = {}
        self._want = (hessian, sample_tokens, absmax)
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in linears.items()]

    def _hook(self, name):
        def fn(_m, inputs, _out):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
            hessian, sample_tokens, absmax = self._want
            if hessian:
                self.h[name] = self.h.get(name, 0) + x.t() @ x
                self.n[name] = self.n.get(name, 0) + x.shape[0]
            if sample_tokens:
                have = self.sample.get(name)
                room = sample_tokens - (0 if have is None else have.shape[0])
                if room > 0:
                    import torch

                    self.sample[name] = x[:room] if have is None else torch.cat([have, x[:room]])
            if absmax:
                m = x.abs().amax(0)
                self.absmax[name] = m if name not in self.absmax else self.absmax[name].maximum(m)
        return fn

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def calibrate_blocks(model, batches: list[dict], per_block, log=lambda t: None, progress=lambda f, **k: None,
                     *, hessian: bool = False, sample_tokens: int = 0, absmax: bool = False) -> dict:
    """Walk the decoder blocks in order: collect each block's Linear input statistics on the calibration
    batches (the inputs come from the blocks before it, already changed by ``per_block``), call
    ``per_block(index, block, stats)`` (which quantizes / folds that block), then run the changed block to make
    the next one's inputs. Returns timings."""
    import torch

    from workbench.core.optimizations._common import blocks as decoder_blocks

    blocks = decoder_blocks(model)
    t0 = time.perf_counter()
    caught = catch_block_inputs(model, blocks, batches)
    if not caught.args:
        raise InputError("calibration: the model never reached its first decoder block; expected a causal LM "
                         "whose blocks are called in order", param="opt")
    per_block_s = []
    for idx, block in enumerate(blocks):
        tb = time.perf_counter()
        linears = {n: m for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)}
        stats = InputStats(linears, hessian, sample_tokens, absmax)
        try:
            with torch.no_grad():
                for i in range(len(caught.args)):
                    block(*caught.args[i], **caught.kwargs[i])
        finally:
            stats.close()
        per_block(idx, block, stats)
        del stats
        run_block(block, caught)
        per_block_s.append(time.perf_counter() - tb)
        progress((idx + 1) / len(blocks), step=idx + 1)
        log(f"calibration: block {idx + 1}/{len(blocks)} in {per_block_s[-1]:.2f} s")
    return {"calibration_seconds": round(time.perf_counter() - t0, 3), "blocks": len(blocks),
            "seconds_per_block": round(sum(per_block_s) / len(per_block_s), 4),
            "calibration_tokens": int(sum(hidden(caught, i).shape[0] * hidden(caught, i).shape[1]
                                          for i in range(len(caught.args))))}


# ------------------------------------------------------------------------------------- into torchao tensors


def to_torchao(qw: QuantWeight, dtype):
    """The torchao tensor a kernel runs for ``qw``: tinygemm's tile-packed int4 (asym, CUDA) or the unpacked
    int8-stored int4 (sym, any device)."""
    import torch

    n, k = qw.codes.shape
    g = qw.grid.group
    if qw.grid.kind in ("sym", "asymi"):
        from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import (
            IntxUnpackedToInt8Tensor,
        )

        zero = torch.zeros_like(qw.scale, dtype=torch.int8) if qw.zero is None else qw.zero.to(torch.int8)
        return IntxUnpackedToInt8Tensor(
            qdata=qw.codes.to(torch.int8), scale=qw.scale.to(dtype), zero_point=zero, target_dtype=torch.int4,
            block_size=(1, g), dtype=dtype, activation_quantization=None)
    from torchao.quantization.quantize_.workflows.int4.int4_tile_packed_to_4d_tensor import (
        Int4TilePackedTo4dTensor,
    )
    from torchao.quantization.utils import pack_tinygemm_scales_and_zeros

    kp, np_ = -(-k // 1024) * 1024, -(-n // 8) * 8  # the kernel's padding (as torchao's from_hp pads)
    pad = torch.nn.functional.pad
    q = pad(qw.codes.to(torch.int32), (0, kp - k, 0, np_ - n), value=8)
    s = pad(qw.scale, (0, (kp - k) // g, 0, np_ - n), value=1.0).to(torch.bfloat16)
    z = pad(qw.zero, (0, (kp - k) // g, 0, np_ - n), value=0.0).to(torch.bfloat16)
    packed = torch.ops.aten._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8).contiguous(),
                                                        8)
    return Int4TilePackedTo4dTensor(qdata=packed, scale_and_zero=pack_tinygemm_scales_and_zeros(s, z, torch.bfloat16),
                                    block_size=[1, g], shape=torch.Size([n, k]), act_pre_scale=None)


def install(linear, qw: QuantWeight) -> None:
    import torch

    linear.weight = torch.nn.Parameter(to_torchao(qw, linear.weight.dtype), requires_grad=False)
