"""Helpers shared by optimization modules: architecture layout, module swapping, output error on calibration data.

Not an optimization module (the leading underscore keeps the registry loader away). Imports torch inside functions.
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.core.errors import InputError


def set_module(model, name: str, new) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


# ------------------------------------------------------------------ architecture layout

@dataclass
class Layout:
    """Where the pieces of a transformer block are, by attribute path inside one layer."""

    kind: str  # "llama" (q/k/v/o_proj, gate/up/down_proj) or "bert" (query/key/value, intermediate/output)
    layers_path: str  # dotted path of the ModuleList of blocks
    q: str
    k: str
    v: str
    o: str
    ffn_in: tuple[str, ...]  # layers whose output rows are FFN neurons
    ffn_out: str  # the layer whose input columns are FFN neurons
    attn: str  # the attention module (head bookkeeping lives there)


LLAMA = dict(kind="llama", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.o_proj",
             ffn_in=("mlp.gate_proj", "mlp.up_proj"), ffn_out="mlp.down_proj", attn="self_attn")
BERT = dict(kind="bert", q="attention.self.query", k="attention.self.key", v="attention.self.value",
            o="attention.output.dense", ffn_in=("intermediate.dense",), ffn_out="output.dense",
            attn="attention.self")


def layers_path(model) -> str:
    """Dotted path of the ModuleList holding the transformer blocks (as many as config.num_hidden_layers)."""
    import torch

    n = getattr(model.config, "num_hidden_layers", None)
    best = None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0 and (n is None or len(module) == n):
            if best is None or name.count(".") < best.count("."):
                best = name
    if best is None:
        raise InputError(f"{type(model).__name__}: cannot find its list of transformer layers; expected a model "
                         f"with config.num_hidden_layers blocks in an nn.ModuleList")
    return best


def layout(model, what: str = "this optimization", param: str | None = None) -> Layout:
    """``what``: the optimization asking, named in the message; ``param``: the parameter it is about (``"opt"``)."""
    path = layers_path(model)
    first = model.get_submodule(path)[0]
    names = {n for n, _ in first.named_modules()}
    for spec in (LLAMA, BERT):
        if {spec["q"], spec["k"], spec["v"], spec["o"], spec["ffn_out"], *spec["ffn_in"]} <= names:
            return Layout(layers_path=path, **spec)
    raise InputError(f"{what}: {type(model).__name__} is not a supported layout; expected a Llama-style "
                     f"(q/k/v/o_proj, gate/up/down_proj) or BERT-style (query/key/value, intermediate/output) model",
                     param=param)


def blocks(model):
    return model.get_submodule(layers_path(model))


# ------------------------------------------------------------------ output error on calibration batches

def outputs(model, task: str, batch: dict):
    """What accuracy is judged on: encoder -> mean-pooled L2-normalised embeddings; others -> log-probs."""
    import torch

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = model(**inputs)
    if task == "encoder":
        hidden = out.last_hidden_state.float()
        mask = inputs["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)
    return torch.log_softmax(out.logits.float(), dim=-1)


def error(task: str, ref, got) -> float:
    """Lower is better, and never below 0. Encoder: 1 - mean cosine; others: mean KL(ref || got) per position
    (``evaluate.kl_divergence``: >= 0 by construction, where the textbook sum went to -4e-8 on an AVX2 CPU)."""
    from workbench.core.evaluate import kl_divergence

    if task == "encoder":  # both L2-normalised: a cosine rounded above 1 is 1
        return max(0.0, float(1.0 - (ref * got).sum(-1).mean()))
    return kl_divergence(ref, got)


def reference(model, task: str, batches: list[dict]) -> list:
    import torch

    with torch.inference_mode():
        return [outputs(model, task, b) for b in batches]


def error_on(model, task: str, batches: list[dict], refs: list) -> float:
    import torch

    with torch.inference_mode():
        errs = [error(task, r, outputs(model, task, b)) for b, r in zip(batches, refs)]
    return sum(errs) / len(errs)


def error_name(task: str) -> str:
    return "1 - cosine" if task == "encoder" else "KL(baseline || optimized)"


def cast(model, dtype) -> None:
    """``model.to(dtype)`` leaving the model as ``from_pretrained(..., dtype=dtype)`` would build it: rotary
    frequency buffers (``inv_freq``, ``original_inv_freq``: computed in float32 at init, never saved) stay float32.
    A plain ``.to(bfloat16)`` rounds them, every position's rotation angle drifts (0.4 % of the frequency), and the
    in-memory model then computes something its own export does not (seen: a bf16 + int8-weight-only export of
    demo:smollm2 reloaded with 3 % different logits, weights bit-identical)."""
    import torch

    kept = [(m, name, buf) for m in model.modules() for name, buf in m._buffers.items()
            if buf is not None and name.endswith("inv_freq") and buf.dtype == torch.float32]
    model.to(dtype)
    for m, name, buf in kept:
        m._buffers[name] = buf.to(m._buffers[name].device)


def float_dtype(model):
    return next(p for p in model.parameters() if p.is_floating_point()).dtype


def keep_layers(model, indices: list[int]) -> None:
    """Keep only the transformer blocks at ``indices`` (in that order); config and per-layer cache indices follow,
    so the model saves and reloads as a plain transformers model with fewer layers."""
    import torch

    path = layers_path(model)
    old = model.get_submodule(path)
    if not indices or any(i < 0 or i >= len(old) for i in indices) or len(set(indices)) != len(indices):
        raise InputError(f"layers {indices}: expected distinct indices in [0, {len(old) - 1}]")
    new = torch.nn.ModuleList([old[i] for i in indices])
    set_module(model, path, new)
    cfg = model.config
    cfg.num_hidden_layers = len(indices)
    types = getattr(cfg, "layer_types", None)
    if isinstance(types, (list, tuple)) and len(types) == len(old):
        cfg.layer_types = [types[i] for i in indices]
    for new_i, block in enumerate(new):
        for m in block.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = new_i  # KV-cache slot


def parse_layers(text: str, n: int, what: str) -> list[int]:
    try:
        out = [int(x) for x in text.replace(";", ",").split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{what}: {text!r} is not a comma-separated list of layer indices", param="opt") from None
    out = [i + n if i < 0 else i for i in out]
    if not out or any(i < 0 or i >= n for i in out) or len(set(out)) != len(out):
        raise InputError(f"{what}: {text!r}: expected distinct layer indices in [0, {n - 1}]", param="opt")
    return out


def spread(k: int, n: int) -> list[int]:
    """``k`` of ``n`` layer indices evenly spread, first and last included."""
    if k >= n:
        return list(range(n))
    if k == 1:
        return [n - 1]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})
