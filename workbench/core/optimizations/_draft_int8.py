"""A speculative draft on int8 weights (``speculative:draft_dtype=int8``, CPU), and the model's own weights as a
draft (``speculative:draft=self``). Registers nothing (speculative.py does).

A draft only proposes: the model verifies every token, so the draft's rounding costs acceptance, never
correctness. On a CPU a decode step reads every weight once, so a draft's cost follows its bytes: every Linear of
the draft becomes an int8 weight with one scale per output row (symmetric, max-abs), a quarter of fp32's bytes,
computed by ATen's weight-only int8 matmul (``_weight_int8pack_mm``) with the input rounded to bf16 for the call
and the output cast back. Measured on an AVX2-only AMD EPYC (2 threads, torch 2.13.0+cpu): a 576x1536 Linear
(SmolLM2's MLP) at one row took 43 µs against 62 for oneDNN's packed fp32 weight and 88 for ``F.linear``, its
49,152-row LM head 1.9 ms against 4.7 and 9.7; with fp32 inputs the same kernel took 477 µs (no vectorised path),
hence the bf16 input. Whole models, static cache, one token: demo:smollm2 on int8 weights ~26-40 ms a step against
~59 for fp32 ``nn.Linear``, agreeing with the fp32 model's next token on 97.9 % of its own greedy reply
(teacher-forced). ATen's int4 CPU kernel (``_weight_int4pack_mm_for_cpu``) was slower on that machine (93 µs and
2.5 ms for the same shapes): not offered.

``draft=self`` copies the model (its embedding shared, not copied) for such a draft: no training, and on demo:smollm2
~98 % agreement at the cost of the model's int8 step. Whether it pays depends on that cost against the model's
step on the same machine: ``benchmarks/speculative.py --self-drafts`` measures it.
"""

from __future__ import annotations

from workbench.core.errors import InputError


def check_device(device: str) -> None:
    if str(device).startswith("cuda"):
        raise InputError("speculative:draft_dtype=int8: an int8 draft is a CPU path (ATen's weight-only int8 "
                         "matmul); expected draft_dtype=bf16 or auto on a GPU", param="opt")


def int8_linear(linear):
    """An ``nn.Linear``'s int8 stand-in (weights per output row; the bias kept in float)."""
    import torch

    class Int8Linear(torch.nn.Module):
        """y = x W^T (+ b) with W as int8 rows times a bf16 scale each; the matmul's input rounded to bf16."""

        def __init__(self) -> None:
            super().__init__()
            w = linear.weight.detach().float()
            scale = w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127.0
            self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
            self.register_buffer("scales", scale.to(torch.bfloat16))
            bias = linear.bias
            self.bias = None if bias is None else torch.nn.Parameter(bias.detach().clone(), requires_grad=False)
            self.in_features, self.out_features = linear.in_features, linear.out_features

        def forward(self, x):
            flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
            y = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self.scales)
            y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias

    return Int8Linear()


def quantize_draft(draft) -> int:
    """Every ``nn.Linear`` of the draft (its LM head too) as ``int8_linear``; float weights only. Returns the count.
    The draft keeps its float dtype for everything else (norms, attention, the embedding)."""
    import torch

    count = 0
    for module in list(draft.modules()):
        for name, child in list(module.named_children()):
            # plain float weights only: a weight already quantized (a tensor subclass) keeps its own kernel
            if type(child) is torch.nn.Linear and type(child.weight.data) is torch.Tensor \
                    and child.weight.dtype.is_floating_point:
                setattr(module, name, int8_linear(child))
                count += 1
    if count and getattr(draft.config, "tie_word_embeddings", False):
        draft.config.tie_word_embeddings = False  # the head is no longer the embedding's storage
    return count


def self_draft(model):
    """A copy of the model for ``draft=self`` (to be quantized): its blocks and head copied, its input embedding
    shared with the model (a lookup reads one row a token; copying it would add its whole size)."""
    import copy

    embed = model.get_input_embeddings()
    memo = {id(embed): embed}  # deepcopy keeps this object as it is: shared, not copied
    draft = copy.deepcopy(model, memo)
    for p in draft.parameters():
        p.requires_grad_(False)
    return draft.eval()
