"""Triton kernels for graph-decode's one-token attention (``graph-decode:decode_kernel=triton``, with fuse=true).

With ``fuse=true`` inductor compiles the grouped-query decode attention (fastgen.decode_attention) into three
kernels a layer — the q·k scores, the softmax's max and sum, the weighted sum of values —, ~6.4 µs of a Llama-1B
layer on an H100 (results/h100_2026-12-07b/gpu_diag_1b.json) where the bytes read (the used rows of the static cache)
take well under a microsecond: the time is launches and round trips. This is split-K decoding in two launches: the
first kernel gives each (sequence, key/value head, span of cache rows) a program that holds the head's group of
query heads, reads its span of the cache where it is (no K/V expanded per query head; the rows the mask hides are
not read: predicated loads, so the static cache's unused tail costs nothing) and keeps an online softmax in fp32;
the second combines the spans' partial results. Spans of one block each until the cache has more than 64 blocks, so
a short cache is two dependent round trips per program (the mask's rows, then the K/V rows they show).

Registered as the custom op ``optbench::decode_attention`` so that torch.compile calls it as it is, inside the step
that graph-decode captures as a CUDA graph. Checked against sdpa in Triton's interpreter on CPU
(tests/test_decode_kernel.py, where triton is installed); its speed waits for a GPU (benchmarks/chain.sh).
"""

from __future__ import annotations

import functools

MAX_SPANS = 64


@functools.cache
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def spans_kernel(Q, K, V, M, PM, PL, PA, scale,
                     sqb, sqh, skb, skh, skl, svb, svh, svl, smb,
                     L: tl.constexpr, KV: tl.constexpr, S: tl.constexpr, SPAN: tl.constexpr, REP: tl.constexpr,
                     REP_P: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)  # (sequence, key/value head); int64: offsets of long caches
        span = tl.program_id(1)
        b = pid // KV
        h = pid % KV
        r = tl.arange(0, REP_P)
        d = tl.arange(0, D)
        heads = h * REP + r
        q = tl.load(Q + b * sqb + heads[:, None] * sqh + d[None, :], mask=(r < REP)[:, None],
                    other=0.0).to(tl.float32)
        m_i = tl.full([REP_P], float("-inf"), tl.float32)
        l_i = tl.zeros([REP_P], tl.float32)
        acc = tl.zeros([REP_P, D], tl.float32)
        for i in tl.range(0, SPAN, BLOCK):
            n = span * SPAN + i + tl.arange(0, BLOCK)
            ok = tl.load(M + b * smb + n, mask=n < L, other=0) != 0
            k = tl.load(K + b * skb + h * skh + n[:, None] * skl + d[None, :], mask=ok[:, None],
                        other=0.0).to(tl.float32)
            s = tl.sum(q[:, None, :] * k[None, :, :], axis=2) * scale
            s = tl.where(ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing visible yet: no NaN
            p = tl.exp(s - m_use[:, None])
            alpha = tl.exp(m_i - m_use)
            v = tl.load(V + b * svb + h * svh + n[:, None] * svl + d[None, :], mask=ok[:, None],
                        other=0.0).to(tl.float32)
            acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            m_i = m_new
        at = (pid * S + span) * REP_P + r  # partials: [b * kv, S, REP_P] and [b * kv, S, REP_P, D]
        tl.store(PM + at, m_i)
        tl.store(PL + at, l_i)
        tl.store(PA + at[:, None] * D + d[None, :], acc)

    @triton.jit
    def combine_kernel(PM, PL, PA, O, sob, soh, KV: tl.constexpr, S: tl.constexpr, S_P: tl.constexpr,
                       REP: tl.constexpr, REP_P: tl.constexpr, D: tl.constexpr):
        pid = tl.program_id(0)
        b = pid // KV
        h = pid % KV
        sp = tl.arange(0, S_P)
        r = tl.arange(0, REP_P)
        d = tl.arange(0, D)
        at = (pid * S + sp[:, None]) * REP_P + r[None, :]  # [S_P, REP_P]
        live = (sp < S)[:, None]
        m = tl.load(PM + at, mask=live, other=float("-inf"))
        l_s = tl.load(PL + at, mask=live, other=0.0)
        m_all = tl.max(m, axis=0)
        m_use = tl.where(m_all == float("-inf"), 0.0, m_all)
        w = tl.exp(m - m_use[None, :])  # [S_P, REP_P]; spans with nothing visible weigh 0
        a = tl.load(PA + at[:, :, None] * D + d[None, None, :], mask=live[:, :, None], other=0.0)
        out = tl.sum(a * w[:, :, None], axis=0) / tl.sum(l_s * w, axis=0)[:, None]
        heads = h * REP + r
        tl.store(O + b * sob + heads[:, None] * soh + d[None, :], out.to(O.dtype.element_ty),
                 mask=(r < REP)[:, None])

    return spans_kernel, combine_kernel


def _launch(q, k, v, allowed, scale: float):
    """q (b, heads, d), k / v (b, kv, L, d), allowed (b, L) bool -> (b, heads, d) in q's dtype."""
    import torch
    import triton

    b, heads, d = q.shape
    kv, length = k.shape[1], k.shape[2]
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1 or v.stride(-1) != 1:
        k, v = k.contiguous(), v.contiguous()
    if allowed.shape[-1] < length:
        raise ValueError(f"decode attention: a mask of {allowed.shape[-1]} positions for a cache of {length}")
    if allowed.stride(-1) != 1:  # the kernel walks the mask's rows with unit stride
        allowed = allowed.contiguous()
    rep = heads // kv
    rep_p = triton.next_power_of_2(rep)
    block = max(16, min(64, 8192 // (rep_p * d)))  # [rep_p, block, d] fp32 products held in registers
    blocks = triton.cdiv(length, block)
    span = block * triton.cdiv(blocks, MAX_SPANS)  # rows per program: one block until the cache is long
    spans = triton.cdiv(length, span)
    f32 = dict(dtype=torch.float32, device=q.device)
    pm, pl = torch.empty((b * kv, spans, rep_p), **f32), torch.empty((b * kv, spans, rep_p), **f32)
    pa = torch.empty((b * kv, spans, rep_p, d), **f32)
    out = torch.empty((b, heads, d), dtype=q.dtype, device=q.device)
    first, second = _kernels()
    first[(b * kv, spans)](q, k, v, allowed, pm, pl, pa, scale,
                           q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
                           v.stride(0), v.stride(1), v.stride(2), allowed.stride(0),
                           L=length, KV=kv, S=spans, SPAN=span, REP=rep, REP_P=rep_p, D=d, BLOCK=block, num_warps=4)
    second[(b * kv,)](pm, pl, pa, out, out.stride(0), out.stride(1), KV=kv, S=spans,
                      S_P=triton.next_power_of_2(spans), REP=rep, REP_P=rep_p, D=d,
                      num_warps=4 if spans <= 16 else 8)  # [spans, rep_p, d] fp32 partials
    return out


def decode_attention_op():
    """``torch.ops.optbench.decode_attention(q, k, v, allowed, scale)``: the kernel as a custom op (see above)."""
    import torch

    if not hasattr(torch.ops.optbench, "decode_attention"):
        @torch.library.custom_op("optbench::decode_attention", mutates_args=(),
                                 schema="(Tensor q, Tensor k, Tensor v, Tensor allowed, float scale) -> Tensor")
        def decode_attention(q, k, v, allowed, scale):
            return _launch(q, k, v, allowed, scale)

        @decode_attention.register_fake
        def _(q, k, v, allowed, scale):
            return q.new_empty(q.shape).contiguous()

    return torch.ops.optbench.decode_attention


def require() -> None:
    """Before a model is routed to the kernel (outside any compiled region): triton importable, the op registered."""
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        raise ValueError("decode_kernel=triton needs triton (it comes with torch's CUDA builds)")
    decode_attention_op()


def supported(query, key, attention_mask, dropout) -> bool:
    """Whether a call can take the kernel: one query position on CUDA, a boolean 4-d mask, head_dim a power of two
    of at least 16, whole query-head groups, no dropout."""
    import torch

    d = query.shape[-1]
    return (query.shape[2] == 1 and query.is_cuda and attention_mask is not None and attention_mask.dim() == 4
            and attention_mask.dtype == torch.bool and not dropout and d & (d - 1) == 0 and d >= 16
            and query.shape[1] % key.shape[1] == 0)


def kernel_attention(query, key, value, attention_mask, scaling):
    """The (b, 1, heads, d) output transformers' attention functions return, through the kernel (``require`` first)."""
    import torch

    b, heads, _, d = query.shape
    allowed = attention_mask[:, 0, -1, :].expand(b, -1)
    scale = float(scaling) if scaling is not None else d ** -0.5
    return torch.ops.optbench.decode_attention(query[:, :, 0], key, value, allowed, scale).unsqueeze(1)
