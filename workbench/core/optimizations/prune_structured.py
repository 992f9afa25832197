"""Structured pruning: whole attention heads and FFN neurons physically removed, so dense kernels do less work.

The same number of heads (or neurons) is removed in every layer, each layer choosing its own least important ones,
so the result is a regular model with a smaller config: Llama-style models export as plain transformers folders
(``num_attention_heads``/``num_key_value_heads``/``intermediate_size`` updated, ``head_dim`` kept). BERT ties its
head size to hidden_size / num_attention_heads, so a head-pruned BERT cannot be described by its config: it exports
in the ``optbench-resized`` format (safetensors + a loader that resizes the Linear layers to the stored shapes).

Importance: ``activation`` (default: the mean absolute input each unit feeds the output projection on calibration
text, times the L2 norm of that projection's columns — the structured form of Wanda, Sun et al. 2023; forward passes
only), ``magnitude`` (L2 norm of every weight the head / neuron owns; no data) or ``gradient`` (first-order Taylor
estimate of the loss change when the unit's output is masked, |sum(W * dL/dW)| over the output projection's columns,
averaged over calibration batches — Michel et al. 2019). Weight magnitude alone is a poor guide for small LLMs:
on demo:smollm2 removing 5 % of FFN neurons by magnitude took perplexity on 256 tokens from 86 to 2903 (layer 0
holds low-norm neurons with large activations), while activation and gradient scores degrade smoothly
(benchmarks/results/prune_importance_smollm2.json). The calibration loss needs no labels: next-token
cross-entropy for causal LMs, in-batch contrastive loss over (paragraph, topic) pairs for encoders, the model's own
predictions as targets for classifiers. Grouped-query attention is pruned by whole KV groups.
"""

from __future__ import annotations

from workbench.core.errors import InputError
from workbench.core.optimizations.base import Applied, Param, register

IMPORTANCE = Param("importance", str, "activation", "activation: mean |input| to the output projection x its "
                   "weight norm on calibration text (forward only); magnitude: weight norms; gradient: Taylor "
                   "estimate on calibration text", choices=("activation", "magnitude", "gradient"),
                   search=("activation", "gradient"))
CALIB = Param("calib_batches", int, 8, "calibration batches for activation / gradient importance", min=1, max=10000)
CALIB_DATA = Param("calib_data", str, "builtin", "calibration text: builtin (end of the built-in text) or a .txt path")


# ------------------------------------------------------------------ slicing

def _slice_linear(lin, keep_idx, dim: int):
    """A new nn.Linear keeping rows (dim=0: output features) or columns (dim=1: input features)."""
    import torch

    w = lin.weight.detach()
    w = w.index_select(dim, keep_idx.to(w.device))
    bias = lin.bias
    if bias is not None and dim == 0:
        bias = bias.detach().index_select(0, keep_idx.to(w.device))
    new = torch.nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if bias is not None:
            new.bias.copy_(bias.detach())
    new.train(lin.training)
    return new


def _heads_info(model, lay):
    cfg = model.config
    h = cfg.num_attention_heads
    if lay.kind == "llama":
        kv = getattr(cfg, "num_key_value_heads", None) or h
        d = getattr(cfg, "head_dim", None) or cfg.hidden_size // h
    else:
        kv = h
        d = cfg.hidden_size // h
    return h, kv, d


def _current_heads(layer, lay, d: int) -> tuple[int, int]:
    q = layer.get_submodule(lay.q).weight.shape[0] // d
    k = layer.get_submodule(lay.k).weight.shape[0] // d
    return q, k


# ------------------------------------------------------------------ importance

def task_loss(model, task: str, batch: dict):
    """A label-free calibration loss (see the module docstring)."""
    import torch

    if task == "causal-lm":
        return model(**batch).loss
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = model(**inputs)
    if task == "seq-cls":
        logits = out.logits.float()
        return torch.nn.functional.cross_entropy(logits, logits.argmax(-1).detach())
    hidden = out.last_hidden_state.float()
    mask = inputs["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9), dim=-1)
    q, d = emb[0::2], emb[1::2]
    n = min(len(q), len(d))
    if n < 2:
        return (1 - (q[:n] * d[:n]).sum(-1)).mean()
    sims = q[:n] @ d[:n].T / 0.05
    return torch.nn.functional.cross_entropy(sims, torch.arange(n, device=sims.device))


def _per_batch_group_scores(model, task, batches, linears, group: int) -> list:
    """For each Linear in ``linears``: mean over batches of |sum over a group of ``group`` input columns of
    sum_rows(W * dL/dW)| — the first-order loss change if that group's input (a head's slice of the attention
    output, or one FFN neuron) were masked (Michel et al. 2019: |.| per batch, then averaged)."""
    import torch

    model_was = model.training
    model.eval()
    req = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for lin in linears:
        lin.weight.requires_grad_(True)
    out = [torch.zeros(lin.weight.shape[1] // group, device=lin.weight.device) for lin in linears]
    try:
        for batch in batches:
            for lin in linears:
                lin.weight.grad = None
            task_loss(model, task, batch).backward()
            for acc, lin in zip(out, linears):
                col = (lin.weight.detach().float() * lin.weight.grad.float()).sum(0)
                acc += col.view(-1, group).sum(-1).abs()
    finally:
        for lin in linears:
            lin.weight.grad = None
        for p, r in req.items():
            p.requires_grad_(r)
        model.train(model_was)
    return [o / max(1, len(batches)) for o in out]


def _per_batch_activation_scores(model, batches, linears, group: int) -> list:
    """For each Linear in ``linears``: mean over tokens of |input| summed over a group of ``group`` input features
    (a head's slice, or one FFN neuron), times the L2 norm of the matching weight columns. Forward passes only."""
    import torch

    sums = [torch.zeros(lin.weight.shape[1], device=lin.weight.device) for lin in linears]
    count = [0]

    def hook(i):
        def fn(_mod, inputs):
            x = inputs[0].detach().float()
            sums[i].add_(x.abs().reshape(-1, x.shape[-1]).sum(0))
            if i == 0:
                count[0] += x.reshape(-1, x.shape[-1]).shape[0]
        return fn

    handles = [lin.register_forward_pre_hook(hook(i)) for i, lin in enumerate(linears)]
    was = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in batches:
                model(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    out = []
    for acc, lin in zip(sums, linears):
        col = lin.weight.detach().float().pow(2).sum(0)  # squared norm per input column
        score = (acc / max(1, count[0])).view(-1, group).sum(-1) * col.view(-1, group).sum(-1).sqrt()
        out.append(score)
    return out


def _calibration(model, ctx, params):
    from workbench.core.optimizations.calibration import token_batches

    seq = 128
    batch = 4 if ctx.task == "causal-lm" else 8
    return token_batches(ctx.tokenizer, ctx.task, n_batches=params["calib_batches"], batch=batch, seq_len=seq,
                         source=params["calib_data"], device=ctx.device)


# ------------------------------------------------------------------ heads

def prune_heads(model, ctx, fraction: float, importance: str, params: dict) -> dict:
    import torch

    from workbench.core.optimizations import _common

    lay = _common.layout(model, "prune-heads", param="opt")
    blocks = _common.blocks(model)
    h, kv, d = _heads_info(model, lay)
    group = h // kv  # query heads per KV head
    q0, k0 = _current_heads(blocks[0], lay, d)
    if any(_current_heads(b, lay, d) != (q0, k0) for b in blocks):
        raise InputError("prune-heads: layers have different head counts already; expected a uniform model",
                         param="opt")
    units = k0  # KV groups (== heads without GQA)
    remove = int(round(fraction * units))
    remove = min(remove, units - 1)
    if remove <= 0:
        return {"heads_before": q0, "heads_after": q0, "removed_per_layer": 0, "note": "fraction rounds to 0 heads"}
    scores = []
    if importance == "gradient":
        batches = _calibration(model, ctx, params)
        o_layers = [b.get_submodule(lay.o) for b in blocks]
        per_head = _per_batch_group_scores(model, ctx.task, batches, o_layers, d)
        for s in per_head:
            scores.append(s.view(units, group).sum(-1))
    elif importance == "activation":
        batches = _calibration(model, ctx, params)
        o_layers = [b.get_submodule(lay.o) for b in blocks]
        for s in _per_batch_activation_scores(model, batches, o_layers, d):
            scores.append(s.view(units, group).sum(-1))
    else:
        for b in blocks:
            qw = b.get_submodule(lay.q).weight.detach().float().view(units, group * d, -1)
            kw = b.get_submodule(lay.k).weight.detach().float().view(units, d, -1)
            vw = b.get_submodule(lay.v).weight.detach().float().view(units, d, -1)
            ow = b.get_submodule(lay.o).weight.detach().float().view(-1, units, group * d)
            s = qw.pow(2).sum((1, 2)) + kw.pow(2).sum((1, 2)) + vw.pow(2).sum((1, 2)) + ow.pow(2).sum((0, 2))
            scores.append(s.sqrt())
    removed = {}
    for i, (b, s) in enumerate(zip(blocks, scores)):
        keep_units = torch.sort(torch.topk(s, units - remove).indices).values.cpu()
        removed[i] = sorted(set(range(units)) - set(keep_units.tolist()))
        q_idx = torch.cat([torch.arange(u * group * d, (u + 1) * group * d) for u in keep_units.tolist()])
        kv_idx = torch.cat([torch.arange(u * d, (u + 1) * d) for u in keep_units.tolist()])
        _common.set_module(b, lay.q, _slice_linear(b.get_submodule(lay.q), q_idx, 0))
        _common.set_module(b, lay.k, _slice_linear(b.get_submodule(lay.k), kv_idx, 0))
        _common.set_module(b, lay.v, _slice_linear(b.get_submodule(lay.v), kv_idx, 0))
        _common.set_module(b, lay.o, _slice_linear(b.get_submodule(lay.o), q_idx, 1))
        attn = b.get_submodule(lay.attn)
        if hasattr(attn, "num_attention_heads"):  # BERT keeps its own counts
            attn.num_attention_heads = (units - remove) * group
            attn.all_head_size = attn.num_attention_heads * d
    heads_after = (units - remove) * group
    exportable = "yes"
    extra: dict = {}
    if lay.kind == "llama":
        cfg = model.config
        before = {"num_attention_heads": cfg.num_attention_heads,
                  "num_key_value_heads": getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads}
        cfg.head_dim = d
        cfg.num_attention_heads = heads_after
        cfg.num_key_value_heads = units - remove
        if cfg.hidden_size % heads_after:
            # transformers refuses to save a config whose hidden_size is not a multiple of num_attention_heads, even
            # with head_dim set (Llama-3.1-8B: 4096 / 24 heads after a 25 % cut). Such a model exports in the
            # optbench-resized format: the config on disk keeps the original counts (the attention modules' shapes
            # come from the stored weights; heads per KV group are unchanged) and the loader sets the real ones.
            exportable = "custom"
            extra = {"config_on_disk": before,
                     "config_after_load": {"num_attention_heads": heads_after, "num_key_value_heads": units - remove}}
    else:
        exportable = "custom"
    return {"heads_before": q0, "heads_after": heads_after, "kv_heads_after": units - remove,
            "removed_per_layer": remove * group, "removed_heads": {str(k): v for k, v in removed.items()},
            "layout": lay.kind, "exportable": exportable, **extra,
            **({"export_format": "optbench-resized"} if exportable == "custom" else {})}


def prune_ffn(model, ctx, fraction: float, importance: str, params: dict) -> dict:
    import torch

    from workbench.core.optimizations import _common

    lay = _common.layout(model, "prune-ffn", param="opt")
    blocks = _common.blocks(model)
    widths = {b.get_submodule(lay.ffn_out).weight.shape[1] for b in blocks}
    if len(widths) != 1:
        raise InputError("prune-ffn: layers have different FFN widths already; expected a uniform model", param="opt")
    width = widths.pop()
    remove = min(int(round(fraction * width)), width - 1)
    if remove <= 0:
        return {"ffn_before": width, "ffn_after": width, "removed_per_layer": 0}
    if importance == "gradient":
        batches = _calibration(model, ctx, params)
        scores = _per_batch_group_scores(model, ctx.task, batches, [b.get_submodule(lay.ffn_out) for b in blocks], 1)
    elif importance == "activation":
        batches = _calibration(model, ctx, params)
        scores = _per_batch_activation_scores(model, batches, [b.get_submodule(lay.ffn_out) for b in blocks], 1)
    else:
        scores = []
        for b in blocks:
            s = b.get_submodule(lay.ffn_out).weight.detach().float().pow(2).sum(0)
            for name in lay.ffn_in:
                s = s + b.get_submodule(name).weight.detach().float().pow(2).sum(1)
            scores.append(s.sqrt())
    for b, s in zip(blocks, scores):
        keep = torch.sort(torch.topk(s, width - remove).indices).values.cpu()
        for name in lay.ffn_in:
            _common.set_module(b, name, _slice_linear(b.get_submodule(name), keep, 0))
        _common.set_module(b, lay.ffn_out, _slice_linear(b.get_submodule(lay.ffn_out), keep, 1))
    model.config.intermediate_size = width - remove
    return {"ffn_before": width, "ffn_after": width - remove, "removed_per_layer": remove, "layout": lay.kind}


def _finish(model, before_params: int, before_bytes: int, rep: dict, ctx, name: str) -> dict:
    from workbench.core.measure.memory import model_size_bytes, param_count

    after = param_count(model)
    rep.update({"params_before": before_params, "params_after": after, "params_removed": before_params - after,
                "params_removed_fraction": (before_params - after) / before_params,
                "bytes_before": before_bytes, "bytes_after": model_size_bytes(model)})
    ctx.log(f"{name}: removed {before_params - after:,} parameters "
            f"({100 * (before_params - after) / before_params:.1f} %)")
    return rep


@register(
    name="prune-heads", family="pruning", stage="prune",
    tp_reason=("it rebuilds the attention projections at new shapes, and the shards of the tensor-parallel plan are "
               "laid out for the old ones"),
    summary="Structured attention-head pruning: the least important heads (or KV groups) of every layer are "
            "physically removed (smaller Q/K/V/O matrices: real speedup).",
    params=(Param("fraction", float, 0.25, "fraction of heads removed in every layer", min=0.0, max=0.95,
                  search=(0.125, 0.25, 0.5)), IMPORTANCE, CALIB, CALIB_DATA),
    notes="Llama-style models export as plain transformers (smaller num_attention_heads, head_dim kept); "
          "BERT-style in the optbench-resized format. Accuracy drops without fine-tuning: follow with distill "
          "or measure the trade-off with small fractions.",
)
def apply_heads(model, params: dict, ctx) -> Applied:
    from workbench.core.measure.memory import model_size_bytes, param_count

    p0, b0 = param_count(model), model_size_bytes(model)
    rep = prune_heads(model, ctx, params["fraction"], params["importance"], params)
    return Applied(model, _finish(model, p0, b0, rep, ctx, "prune-heads"))


@register(
    name="prune-ffn", family="pruning", stage="prune",
    tp_reason=("it rebuilds the MLP projections at new shapes, and the shards of the tensor-parallel plan are laid "
               "out for the old ones"),
    summary="Structured FFN-neuron pruning: the least important intermediate neurons of every layer are "
            "physically removed (narrower MLP matrices: real speedup).",
    params=(Param("fraction", float, 0.25, "fraction of FFN neurons removed in every layer", min=0.0, max=0.95,
                  search=(0.125, 0.25, 0.5)), IMPORTANCE, CALIB, CALIB_DATA),
    notes="Exports as plain transformers (intermediate_size updated). Accuracy drops without fine-tuning.",
)
def apply_ffn(model, params: dict, ctx) -> Applied:
    from workbench.core.measure.memory import model_size_bytes, param_count

    p0, b0 = param_count(model), model_size_bytes(model)
    rep = prune_ffn(model, ctx, params["fraction"], params["importance"], params)
    return Applied(model, _finish(model, p0, b0, rep, ctx, "prune-ffn"))
