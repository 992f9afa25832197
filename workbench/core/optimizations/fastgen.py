"""Greedy decoding with a static KV cache and the whole decode step replayed as one CUDA graph.

transformers' ``generate`` spends milliseconds per token in Python around the forward pass (logits processors,
stopping criteria, cache bookkeeping, host syncs), so at batch 1 it cannot approach the memory-bandwidth roofline
however fast the forward is. Measured on an H200 (benchmarks/results): even ``torch.compile(mode="reduce-overhead")``
around the step costs about 1.5 ms of host time per token (CUDA-graph-tree bookkeeping and guards over hundreds of
parameters), the same for a 135 M and a 1.2 B model — a host floor, not a memory one.

So this loop compiles the step (forward + argmax + advancing its own position) without CUDA graphs, captures one
step into a ``torch.cuda.CUDAGraph`` whose inputs and outputs are static buffers, and replays it: a replay is one
host call. The KV cache is transformers' ``StaticCache`` (fixed addresses). Prefill runs eagerly once per call.
If capture fails (a model with a host sync inside its forward), it falls back to compile's own CUDA graphs
(``reduce-overhead``), cloning each output before the next replay (without the clone that mode fails with
"accessing tensor output of CUDAGraphs that has been overwritten").

On CPU the same loop runs eagerly, which is how its tokens are checked against ``generate``.

Two knobs aimed at the kernels themselves (at batch 1 the step is bound by GEMV-shaped matmuls, which cuBLAS runs
at well under the HBM roofline on small matrices — benchmarks/results/gpu_diag_*.json):
``tuning="coordinate-descent"`` lets inductor tune its Triton kernels' block sizes by coordinate descent, and
``gemv=True`` rewrites every plain ``nn.Linear`` that sees a single row (the decode step at batch 1) as a
broadcast-multiply + sum, which inductor turns into one fused Triton reduction kernel reading the weight once
(accumulating in fp32); prefill and batches keep ``F.linear``. ``matmul="extern"`` does the opposite: every Linear
stays a library call (cuBLAS) that inductor cannot rewrite, while coordinate descent still tunes the rest of the
step (see ``extern_linear``). They only change how the step is compiled.

``fuse=True`` (Llama-family layers) cuts the number of kernels per step, the other bound at batch 1:
q/k/v become one projection and gate/up another, over one concatenated weight whose row blocks *are* the
original parameters (views: no extra memory, the state dict keeps its names), and the decode attention becomes a
grouped-query product against the cached keys without expanding them to every head (transformers' sdpa path
copies K and V once per head group when a mask is present). Prefill and batches keep the library's attention.

The fusion also takes torchao-quantized weights (``_quantized_concat``): every format used here quantizes per output
row (per-row scales, or groups of input channels within a row), so the rows of the parts' quantized data and scales,
concatenated, *are* the quantization of the concatenated matrix. The fused tensor holds the concatenation and each
projection's weight becomes a tensor of the same type over row slices of it (one copy). torchao's tile-packed int4
(tinygemm) keeps its scales as [groups, rows, 2], so a projection's slice is not contiguous, which its matmul and
``save_pretrained`` refuse: such a projection computes, and appears in ``state_dict()``, through a transient
contiguous copy of its own scales (``_standalone``), while the fused tensor's copy is the only one kept.
"""

from __future__ import annotations

import os

from typing import Callable

from workbench.core.optimizations._linear_forms import (MATMULS, _linear, extern_linear,  # noqa: F401 - re-exported
                                                        use_extern, use_gemv)

MODES = ("graph", "reduce-overhead", "eager")
TUNINGS = ("none", "coordinate-descent")
# inductor's fusion switches for the step (graph mode): combo kernels put independent small kernels (the rotary
# embedding of q and of k, the two cache writes ...) into one launch; aggressive fusion fuses nodes that share no
# memory traffic too. At batch 1 every launch saved is ~1-2 µs of a ~1.2 ms Llama-1B step.
FUSIONS = {"default": {}, "combo": {"combo_kernels": True}, "aggressive": {"aggressive_fusion": True},
           "combo+aggressive": {"combo_kernels": True, "aggressive_fusion": True}}
# pdl: programmatic dependent launch (Hopper and later): each of the step's Triton kernels may be launched while the
# one before it finishes and waits (gdc_wait) only where it reads that kernel's output — the gap between launches,
# ~222 of them in a Llama-1B step, is what it saves
PDL_OPTION = "triton.enable_pdl"


class _Shared:
    """What the first projection of a fused group computed, for the others (same input, same step)."""

    __slots__ = ("x", "parts")

    def __init__(self) -> None:
        self.x = self.parts = None


def _fused_first(self, x):
    parts = _linear(x, self._optbench_fused_weight, self._optbench_fused_bias, self._optbench_gemv,
                    getattr(self, "_optbench_extern", False)).split(self._optbench_sizes, dim=-1)
    self._optbench_shared.x, self._optbench_shared.parts = x, parts
    return parts[0]


def _fused_rest(self, x):
    shared = self._optbench_shared
    if shared.x is x:
        return shared.parts[self._optbench_index]
    return _linear(x, _part_weight(self), self.bias, self._optbench_gemv,  # called on another input: compute it
                   getattr(self, "_optbench_extern", False))


# torchao (0.18) tensor types whose inner tensors run along the weight's output rows: name -> (the dim they run
# along, output rows per entry: tinygemm packs 8 rows per n-tile). An inner tensor of another name makes the part
# unfusable unless it is on the input side (_QUANT_INPUT_SIDE: one value per input channel or per tensor), where
# the parts must hold equal ones and the fused tensor shares the first's.
_QUANT_ROWS = {
    "IntxUnpackedToInt8Tensor": {"qdata": (0, 1), "scale": (0, 1), "zero_point": (0, 1)},
    "Int8Tensor": {"qdata": (0, 1), "scale": (0, 1), "zero_point": (0, 1)},
    "Float8Tensor": {"qdata": (0, 1), "scale": (0, 1)},
    "Int4TilePackedTo4dTensor": {"qdata": (0, 8), "scale_and_zero": (1, 1)},  # act_pre_scale: not fused
}
_QUANT_INPUT_SIDE = {"Int8Tensor": ("act_quant_scale", "act_quant_zero_point", "act_pre_scale")}


def _rebuild(cls, inner: dict, attrs: dict, size):
    import torch

    attrs = dict(attrs)
    if "shape" in attrs:  # tile-packed int4 keeps the unpadded shape as an attribute
        attrs["shape"] = torch.Size(size)
    t = cls.__tensor_unflatten__(inner, attrs, torch.Size(size), None)
    return t if t.shape == torch.Size(size) else None


def _quantized_concat(weights: list):
    """(fused tensor, one same-type tensor over its row slices per part) for torchao weights quantized per output
    row, else None: another type, mixed types, any non-tensor attribute that differs (block size, activation
    quantization, kernel preference ...), scales that are not per row (per-tensor fp8/int8: each part has its own
    scale), unequal input-side tensors, or tile-packed parts whose rows are not whole n-tiles of 8."""
    import torch

    cls = type(weights[0])
    rows = _QUANT_ROWS.get(cls.__name__) if cls.__module__.split(".")[0] == "torchao" else None
    if rows is None or any(type(w) is not cls or w.dim() != 2 for w in weights):
        return None
    flat = [w.__tensor_flatten__() for w in weights]
    names = flat[0][0]
    try:
        plain = [{k: v for k, v in a.items() if k != "shape"} for _, a in flat]
        if any(list(n) != list(names) or a != plain[0] for (n, _), a in zip(flat, plain)):
            return None
    except Exception:  # noqa: BLE001 - attributes that cannot be compared are not known to agree
        return None
    input_side = _QUANT_INPUT_SIDE.get(cls.__name__, ())
    if any(n not in rows and n not in input_side for n in names):
        return None
    for name in names:
        ts = [getattr(w, name) for w in weights]
        ref = ts[0]
        if any(not isinstance(t, torch.Tensor) or type(t) is not torch.Tensor or t.dtype != ref.dtype
               or t.device != ref.device or t.dim() != ref.dim() for t in ts):
            return None
        if name in rows:
            dim, per = rows[name]
            if ref.dim() <= dim or any(w.shape[0] % per or t.shape[dim] * per != w.shape[0]
                                       or t.shape[:dim] != ref.shape[:dim] or t.shape[dim + 1:] != ref.shape[dim + 1:]
                                       for w, t in zip(weights, ts)):
                return None
        elif any(t.shape != ref.shape or not torch.equal(t, ref) for t in ts):
            return None
    try:  # nothing is changed yet: a constructor that refuses the result means no fusion, as before
        with torch.no_grad():
            inner = {n: torch.cat([getattr(w, n) for w in weights], dim=rows[n][0]) if n in rows
                     else getattr(weights[0], n) for n in names}
        fused = _rebuild(cls, inner, flat[0][1], (sum(w.shape[0] for w in weights), weights[0].shape[1]))
        views, start = [], 0
        for w, (_, attrs) in zip(weights, flat):
            n = w.shape[0]
            views.append(_rebuild(cls, {k: v.narrow(rows[k][0], start // rows[k][1], n // rows[k][1]) if k in rows
                                        else v for k, v in inner.items()}, attrs, w.shape))
            start += n
    except Exception:  # noqa: BLE001
        return None
    if fused is None or any(v is None or v.dtype != w.dtype for v, w in zip(views, weights)):
        return None
    return fused, views


def _standalone(weight):
    """The weight with contiguous inner tensors: a tile-packed projection's slice of the fused scales is strided
    (torchao's matmul asserts contiguity, safetensors refuses it), so it computes and is saved through this
    transient copy of its own scales (its packed rows are contiguous slices and stay shared)."""
    names, attrs = weight.__tensor_flatten__()
    return _rebuild(type(weight), {n: getattr(weight, n).contiguous() for n in names}, attrs, weight.shape)


def _part_weight(m):
    return _standalone(m.weight) if getattr(m, "_optbench_standalone", False) else m.weight


def _standalone_forward(self, x):
    return _linear(x, _standalone(self.weight), self.bias, False)


def _standalone_state(module, state_dict, prefix, local_metadata) -> None:
    key = prefix + "weight"
    if key in state_dict:
        state_dict[key] = _standalone(state_dict[key])


def _set_part(m, view) -> None:
    """Make the quantized ``view`` (row slices of a fused tensor) ``m``'s weight; a strided one computes and is
    saved through ``_standalone``."""
    import torch

    m.weight = torch.nn.Parameter(view, requires_grad=False)
    if not all(getattr(view, n).is_contiguous() for n in view.__tensor_flatten__()[0]):
        m._optbench_standalone = True
        m.register_state_dict_post_hook(_standalone_state)


# Fusing torchao-quantized projections on CUDA (tinygemm int4, rowwise fp8) is written and has GPU tests
# (tests/test_fuse_quantized.py -m gpu), but no GPU has run them yet: until one has, it needs this variable set to 1;
# without it quantized groups on a GPU stay unfused, as before (CPU types are tested and always fuse).
QUANTIZED_CUDA_FLAG = "OPTBENCH_FUSE_QUANTIZED_CUDA"


def _already_fused(linears: list) -> bool:
    """Whether these layers are one fused group already, in this order. Fusing them again would concatenate the views
    into a new weight and free the old one, which a CUDA graph captured by an earlier generator on the same model
    still reads (seen on an H100: benchmarks built a generator per variant on one model)."""
    shared = getattr(linears[0], "_optbench_shared", None)
    return (shared is not None and hasattr(linears[0], "_optbench_fused_weight")
            and len(getattr(linears[0], "_optbench_sizes", ())) == len(linears)
            and all(getattr(m, "_optbench_shared", None) is shared and m._optbench_index == i
                    for i, m in enumerate(linears)))


def _fuse_group(linears: list, gemv: bool) -> bool:
    """One weight for Linear layers that always see the same input; their parameters become row views of it
    (torchao-quantized weights: see ``_quantized_concat``)."""
    import types

    import torch

    if _already_fused(linears):  # a second generator on the same model: keep the weight its graphs were built on
        for m in linears:
            m._optbench_gemv = gemv and type(linears[0]._optbench_fused_weight) is torch.Tensor
        return True
    if any(type(m) is not torch.nn.Linear for m in linears):
        return False
    if len({(m.in_features, m.weight.dtype, m.weight.device, m.bias is None) for m in linears}) != 1:
        return False
    views = None
    if all(type(m.weight.data) is torch.Tensor for m in linears):
        with torch.no_grad():
            weight = torch.cat([m.weight.data for m in linears])
    elif linears[0].weight.device.type != "cpu" and os.environ.get(QUANTIZED_CUDA_FLAG) != "1":
        return False  # written for CUDA (tile-packed int4, rowwise fp8) but not yet run on a GPU: opt-in only
    else:
        quantized = _quantized_concat([m.weight.data for m in linears])
        if quantized is None:
            return False
        weight, views = quantized
    with torch.no_grad():
        bias = torch.cat([m.bias.data for m in linears]) if linears[0].bias is not None else None
    first, shared, start = linears[0], _Shared(), 0
    if views is None:
        first.register_buffer("_optbench_fused_weight", weight, persistent=False)
    else:  # not a buffer: model_size_bytes counts a tensor subclass by its own bytes, already held by the views
        first._optbench_fused_weight = weight
    first.register_buffer("_optbench_fused_bias", bias, persistent=False)
    first._optbench_sizes = [m.out_features for m in linears]
    for i, m in enumerate(linears):
        n = m.out_features
        if views is None:
            m.weight.data = weight[start:start + n]  # the parameter now lives inside the fused weight
        else:
            _set_part(m, views[i])
        if bias is not None:
            m.bias.data = bias[start:start + n]
        start += n
        # the GEMV rewrite multiplies by the weight itself: plain weights only
        m._optbench_shared, m._optbench_index, m._optbench_gemv = shared, i, gemv and views is None
        m.forward = types.MethodType(_fused_first if i == 0 else _fused_rest, m)
    return True


class plain_forward:
    """For the duration, the fused projections compute as the plain Linear layers they are views of: what the
    model's export computes. (One fused GEMM and three separate ones round differently in bf16; through 32 layers of
    a random-init 8B model that reached 5 % of the largest logit on an H200, while the weights are bit-identical.)"""

    def __init__(self, model) -> None:
        self.model, self.swapped = model, []

    def __enter__(self):
        import types

        for m in self.model.modules():
            if "_optbench_shared" in vars(m) and "forward" in vars(m):
                self.swapped.append((m, m.__dict__.pop("forward")))
                if getattr(m, "_optbench_standalone", False):  # nn.Linear's forward, on a contiguous copy
                    m.forward = types.MethodType(_standalone_forward, m)
        return bool(self.swapped)

    def __exit__(self, *exc):
        for m, fwd in self.swapped:
            m.forward = fwd
        self.swapped = []
        return False


DECODE_ATTENTION = "optbench_decode"
VERIFY_ATTENTION = "optbench_decode_verify"  # decode_attention that also decomposes short queries (verify rounds)
VERIFY_MAX = 16  # the longest query verify_attention="decomposed" computes itself; prefills go to sdpa
VERIFY_CHOICES = ("sdpa", "decomposed")
KERNELS = ("inductor", "triton")  # the one-token attention: compiled from grouped-query ops, or _decode_kernel.py
DECODE_TRITON, VERIFY_TRITON = DECODE_ATTENTION + "_triton", VERIFY_ATTENTION + "_triton"


def decode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """One query position against the cache, grouped-query without expanding K/V: (b, kv, rep, d) · (b, kv, L, d).
    Anything else (prefill, no mask) goes to transformers' sdpa."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    b, heads, q_len, d = query.shape
    if q_len != 1 or attention_mask is None or attention_mask.dim() != 4 or dropout:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    kv_heads = key.shape[1]
    q = query.reshape(b, kv_heads, heads // kv_heads, 1, d).float()
    scores = (q * key.unsqueeze(2).float()).sum(-1) * (scaling if scaling is not None else d ** -0.5)
    mask = attention_mask[:, :, -1:, :]  # (b or 1, 1, 1, L) -> broadcast over (b, kv, rep, L)
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    else:
        scores = scores + mask.float()
    probs = scores.softmax(-1)
    out = (probs.unsqueeze(-1) * value.unsqueeze(2).float()).sum(-2)  # (b, kv, rep, d)
    return out.to(query.dtype).reshape(b, heads, d).unsqueeze(1), None  # (b, q=1, heads, d) like sdpa's


def verify_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """``decode_attention``, and a query of 2..``VERIFY_MAX`` positions (a speculative verify round) computed here
    too: grouped-query matmuls against the cache, the mask's last rows (causal among the new positions), softmax in
    fp32 — ops inductor fuses, where sdpa's choice for a short query on an H100 was a cuDNN kernel twice as slow as
    the one-token step's (results/h100_2026-12-07b/spec_diag_draft_cuda.json). Longer queries go to sdpa."""
    import torch

    b, heads, q_len, d = query.shape
    if q_len == 1 or q_len > VERIFY_MAX or attention_mask is None or attention_mask.dim() != 4 or dropout:
        return decode_attention(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                **kwargs)
    kv_heads, length = key.shape[1], key.shape[2]
    rep = heads // kv_heads
    q = query.reshape(b, kv_heads, rep * q_len, d).float()  # head h reads kv head h // rep, as repeat_kv expands
    scores = torch.matmul(q, key.float().transpose(-1, -2)) * (scaling if scaling is not None else d ** -0.5)
    scores = scores.reshape(b, kv_heads, rep, q_len, length)
    mask = attention_mask[:, :, -q_len:, :].unsqueeze(2)  # (b or 1, 1, 1, q, L)
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    else:
        scores = scores + mask.float()
    probs = scores.softmax(-1).reshape(b, kv_heads, rep * q_len, length)
    out = torch.matmul(probs, value.float()).reshape(b, heads, q_len, d)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None  # (b, q, heads, d) like sdpa's


def _kernel_first(fallback):
    """An attention function that sends one-token calls the kernel takes to ``_decode_kernel`` and the rest to
    ``fallback`` (``decode_attention`` or ``verify_attention``)."""
    from workbench.core.optimizations import _decode_kernel

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        if (kwargs.get("softcap") is None and kwargs.get("s_aux") is None  # logit soft-capping, sinks: not in it
                and _decode_kernel.supported(query, key, attention_mask, dropout)):
            return _decode_kernel.kernel_attention(query, key, value, attention_mask, scaling), None
        return fallback(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)

    return attention


def fuse_projections(model, gemv: bool = False, verify: str = "sdpa", kernel: str = "inductor") -> dict:
    """Fuse q/k/v and gate/up and route decode attention through ``decode_attention`` (``verify="decomposed"``:
    ``verify_attention``, which also computes short queries itself; see the module docstring). Returns counts of
    what was fused. The attention choice is the model's: a later call with another ``verify`` changes it."""
    import copy

    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    if verify not in VERIFY_CHOICES or kernel not in KERNELS:
        raise ValueError(f"verify must be one of {VERIFY_CHOICES}, kernel one of {KERNELS}")
    names = {("sdpa", "inductor"): DECODE_ATTENTION, ("decomposed", "inductor"): VERIFY_ATTENTION,
             ("sdpa", "triton"): DECODE_TRITON, ("decomposed", "triton"): VERIFY_TRITON}
    want = names[verify, kernel]
    fns = {DECODE_ATTENTION: decode_attention, VERIFY_ATTENTION: verify_attention}
    if kernel == "triton":
        from workbench.core.optimizations import _decode_kernel

        _decode_kernel.require()
        fns.update({DECODE_TRITON: _kernel_first(decode_attention), VERIFY_TRITON: _kernel_first(verify_attention)})
    for name, fn in fns.items():
        AttentionInterface.register(name, fn)
        AttentionMaskInterface.register(name, sdpa_mask)
    done = {"qkv": 0, "gate_up": 0, "attention": 0}
    for mod in model.modules():
        if all(hasattr(mod, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "config")):
            if _fuse_group([mod.q_proj, mod.k_proj, mod.v_proj], gemv):
                done["qkv"] += 1
            impl = getattr(mod.config, "_attn_implementation", None)
            if impl == "sdpa":
                mod.config = copy.copy(mod.config)  # this module only: the model's mask and export stay sdpa
            if impl == "sdpa" or impl in names.values():
                mod.config._attn_implementation = want
                done["attention"] += impl == "sdpa"
        if all(hasattr(mod, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            if _fuse_group([mod.gate_proj, mod.up_proj], gemv):
                done["gate_up"] += 1
    return done


def cache_argument(model) -> str:
    """The forward's name for the KV cache: ``cache`` in newer transformers (``past_key_values`` is deprecated
    there and slated for removal), ``past_key_values`` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


class GraphedGreedy:
    what = "graph-decode"  # who says so in the log

    def __init__(self, model, batch: int, max_len: int, mode: str = "graph", compile_mode: str = "default",
                 log: Callable[[str], None] | None = None, tuning: str = "none", gemv: bool = False,
                 fuse: bool = False, verify_attention: str = "sdpa", matmul: str = "inductor",
                 fusion: str = "default", pdl: bool = False, decode_kernel: str = "inductor") -> None:
        import torch
        from transformers import StaticCache

        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.torch = torch
        self.model = model
        self.batch = batch
        self.max_len = max_len
        self.log = log or (lambda text: None)
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self._cache_kw = {cache_argument(model): self.cache}
        self.mode = mode
        self.graph = None
        self._tok = self._pos = None
        if tuning not in TUNINGS:
            raise ValueError(f"tuning must be one of {TUNINGS}")
        if fuse:
            if decode_kernel != "inductor" and mode == "eager":
                self.log(f"graph-decode: decode_kernel={decode_kernel} is a CUDA kernel; the eager loop keeps the "
                         "compiled-from-ops attention")
                decode_kernel = "inductor"
            fused = fuse_projections(model, gemv=gemv and mode != "eager", verify=verify_attention,
                                     kernel=decode_kernel)
            self.log(f"graph-decode: fused {fused}")
        if matmul not in MATMULS:
            raise ValueError(f"matmul must be one of {MATMULS}")
        if gemv and matmul == "extern":
            raise ValueError("gemv computes each Linear as a Triton reduction, matmul=extern as a library call: "
                             "one or the other")
        if gemv and mode != "eager":
            self.log(f"graph-decode: GEMV forward on {use_gemv(model)} Linear layers")
        if matmul == "extern":
            self.log(f"graph-decode: library matmuls on {use_extern(model)} Linear layers")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {tuple(FUSIONS)}")
        if mode == "graph":
            options = {**({"coordinate_descent_tuning": True} if tuning == "coordinate-descent" else {}),
                       **FUSIONS[fusion], **({PDL_OPTION: True} if pdl else {})}
            if pdl and not hasattr(torch._inductor.config.triton, PDL_OPTION.split(".")[1]):
                raise ValueError(f"pdl needs an inductor with {PDL_OPTION} (torch {torch.__version__} has none)")
            if options:  # torch.compile takes a mode or options, not both
                if compile_mode.startswith("max-autotune"):
                    options.update({"max_autotune": True, "triton.cudagraphs": False})
                self._step = torch.compile(self._decode_step, options=options, fullgraph=True, dynamic=False)
            else:
                self._step = torch.compile(self._decode_step, mode=compile_mode, fullgraph=True, dynamic=False)
        elif mode == "reduce-overhead":
            self._step = torch.compile(self._decode_step, mode="reduce-overhead", fullgraph=True, dynamic=False)
        else:
            self._step = self._decode_step

    def _decode_step(self, token, cache_position):
        out = self.model(input_ids=token, cache_position=cache_position, use_cache=True, **self._cache_kw)
        return out.logits[:, -1, :].argmax(dim=-1, keepdim=True)

    def _graph_body(self) -> None:
        """One decode step on the static buffers: next token into _tok, position advanced."""
        self._tok.copy_(self._step(self._tok, self._pos))
        self._pos.add_(1)

    def _static_buffers(self, token, pos) -> None:
        """The static inputs and outputs the captured step reads and writes (``_graph_body``'s)."""
        self._tok, self._pos = token.clone(), pos.clone()

    def _before_warmup(self) -> None:
        """Run before each warm-up of a step about to be captured (a subclass rewinds the cache there)."""

    def _capture_body(self, body):
        """``body`` run three times (compile, autotune, allocate) on a side stream, then captured as a CUDA graph."""
        torch = self.torch
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._before_warmup()
                body()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            body()
        return graph

    def _capture(self, token, pos) -> bool:
        torch = self.torch
        self._static_buffers(token, pos)
        try:
            graph = self._capture_body(self._graph_body)
        except Exception as exc:  # noqa: BLE001 - any capture failure means: use compile's own graphs
            self.log(f"{self.what}: CUDA graph capture failed ({type(exc).__name__}: {str(exc)[:160]}); "
                     f"falling back to torch.compile(mode='reduce-overhead')")
            torch.cuda.synchronize()
            self.mode = "reduce-overhead"
            self._step = torch.compile(self._decode_step, mode="reduce-overhead", fullgraph=True, dynamic=False)
            return False
        self.graph = graph
        return True

    def generate(self, input_ids, max_new_tokens: int, on_step: Callable[[], None] | None = None):
        """Greedy tokens after ``input_ids`` (every row the same length, no padding). ``on_step`` is called after
        each token's step was issued (for timing), exactly like a logits processor inside ``generate``."""
        torch = self.torch
        b, t = input_ids.shape
        if b != self.batch or t + max_new_tokens > self.max_len:
            raise ValueError(f"GraphedGreedy was built for batch {self.batch} and {self.max_len} positions")
        device = input_ids.device
        with torch.inference_mode():
            self.cache.reset()  # zeroes in place: captured addresses stay valid
            logits = self.model(input_ids=input_ids, cache_position=torch.arange(t, device=device),
                                use_cache=True, **self._cache_kw).logits
            token = logits[:, -1, :].argmax(dim=-1, keepdim=True)
            pos = torch.tensor([t], device=device, dtype=torch.long)
            if self.mode == "graph" and self.graph is None and device.type == "cuda":
                self._capture(token, pos)
                # The warm-up steps before capture advanced the cache's own counters (transformers keeps a
                # cumulative length per layer): start this call again from a clean cache.
                self.cache.reset()
                logits = self.model(input_ids=input_ids, cache_position=torch.arange(t, device=device),
                                    use_cache=True, **self._cache_kw).logits
                token = logits[:, -1, :].argmax(dim=-1, keepdim=True)
            if on_step:
                on_step()
            out = [token]
            if self.graph is not None:
                self._tok.copy_(token)
                self._pos.copy_(pos)
                for _ in range(max_new_tokens - 1):
                    self.graph.replay()
                    out.append(self._tok.clone())
                    if on_step:
                        on_step()
            else:
                for _ in range(max_new_tokens - 1):
                    if self.mode == "reduce-overhead":
                        torch.compiler.cudagraph_mark_step_begin()
                    token = self._step(token, pos).clone()
                    pos += 1
                    out.append(token)
                    if on_step:
                        on_step()
            return torch.cat([input_ids, *out], dim=1)
