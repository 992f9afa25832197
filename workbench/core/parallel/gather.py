"""A tensor-parallel model inside a rank: how it is loaded (transformers' own plan), what each rank holds, and its
full weights gathered into one ordinary model for export.

Export: every rank gathers every DTensor (``full_tensor()``, an all-gather: every rank takes part, in the same
order), rank 0 keeps the full tensors on the CPU and builds a plain, unsplit model of the same class from them. That
model goes through the ordinary export (core/export.py: save, reload, compare) like any other; the record also says
how far the gathered model's outputs are from the tensor-parallel model's on the same input. Rank 0 then holds the
whole model in host memory once (a 70B model in bf16: about 140 GB).
"""

from __future__ import annotations

from workbench.core.errors import InputError
from workbench.core.parallel import group


def tp_placement(config, tp: int, ref: str) -> dict:
    """The ``from_pretrained`` arguments that load this rank's shards; refuses what transformers cannot split."""
    from workbench.core.parallel import rules

    if not group.active():
        raise InputError(f"{tp}: a tensor-parallel model is loaded by every rank of a torchrun job, which the job "
                         f"client starts for a run job; expected tp in a run job's recipe", param="tp")
    if group.world() != tp:
        raise InputError(f"{tp}: this job has {group.world()} ranks; expected {tp}", param="tp")
    text = getattr(config, "text_config", None) or config
    if not getattr(text, "base_model_tp_plan", None):
        raise InputError(f"{tp}: {ref} ({getattr(config, 'model_type', '?')}) has no tensor-parallel plan in this "
                         f"transformers; expected a model whose config declares one (Llama, Qwen2, Mistral, ...), "
                         f"or no tp", param="tp")
    heads = getattr(text, "num_attention_heads", None)
    rules.check_heads(tp, heads, getattr(text, "num_key_value_heads", None) or heads, ref)
    try:
        from transformers import DistributedConfig
    except ImportError:  # older transformers: the keyword itself
        return {"tp_plan": "auto"}
    return {"distributed_config": DistributedConfig(tp_plan="auto", tp_size=tp)}


def rank_memory(model, device: str, cuda: dict) -> dict | None:
    """What every rank holds (rank 0's list; None outside tensor parallelism): its shard's bytes, its CUDA peak, its
    resident memory."""
    if not group.active():
        return None
    import os

    import psutil

    from workbench.core.measure.memory import model_size_bytes

    mine = {"rank": group.rank(), "device": device, "shard_mb": model_size_bytes(model) / 1e6,
            "cuda_peak_allocated_mb": cuda.get("cuda_peak_allocated"),
            "cuda_peak_reserved_mb": cuda.get("cuda_peak_reserved"),
            "rss_mb": psutil.Process(os.getpid()).memory_info().rss / 2**20}
    return {"ranks": group.gather(mine)}


def _local(t):
    import torch

    return t.data if isinstance(t, torch.nn.Parameter) else t


def full_state(model) -> dict | None:
    """Every parameter and buffer as a full CPU tensor, by name (tied names share one tensor). Collective: every rank
    calls it; rank 0 gets the dict, the others None."""
    from torch.distributed.tensor import DTensor

    keep = group.rank() == 0
    out, by_id = {}, {}
    named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    for name, t in named:
        if id(t) in by_id:
            out[name] = by_id[id(t)]
            continue
        x = _local(t)
        if isinstance(x, DTensor):
            x = x.full_tensor()
        x = x.detach().to("cpu", copy=True) if keep else None
        by_id[id(t)] = x
        out[name] = x
    return out if keep else None


def plain_copy(model, task: str):
    """Rank 0: an ordinary (unsplit, CPU) model of the same class with the full weights; the other ranks: None.
    Collective (see ``full_state``)."""
    import copy

    import torch

    from workbench.core.models import auto_class

    state = full_state(model)
    if state is None:
        return None
    config = copy.deepcopy(model.config)
    for attr in ("distributed_config", "tp_plan", "_tp_plan", "tp_size"):
        if attr in config.__dict__:
            delattr(config, attr)
    dtype = next(v.dtype for v in state.values() if v.is_floating_point())
    with torch.device("meta"):
        plain = auto_class(task).from_config(config, dtype=dtype)
    params = {}
    named = dict(plain.named_parameters(remove_duplicate=False))
    for name, x in state.items():
        owner, _, leaf = name.rpartition(".")
        mod = plain.get_submodule(owner) if owner else plain
        if name in named:
            p = params.setdefault(id(x), torch.nn.Parameter(x, requires_grad=False))
            mod._parameters[leaf] = p
        else:
            mod._buffers[leaf] = x
    if getattr(config, "tie_word_embeddings", False):
        plain.tie_weights()
    left = [n for n, t in list(plain.named_parameters()) + list(plain.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"gathering the tensor-parallel model left {len(left)} tensor(s) unset: {left[:3]}")
    plain.generation_config = copy.deepcopy(model.generation_config)
    plain.config._attn_implementation = getattr(model.config, "_attn_implementation", None) or "sdpa"
    return plain.eval()


def export(loaded, artifact_dir: str, recipe: dict, opt_reports: list[dict]) -> dict | None:
    """The gathered export (rank 0's record; None on the other ranks). Every rank calls it."""
    from workbench.core import export as export_mod
    from workbench.core.optimizations.fastgen import plain_forward

    export_mod.export_format(opt_reports)  # an optimization that cannot be exported: refused on every rank alike
    inputs = export_mod._fixed_inputs(loaded.tokenizer, loaded.device)
    with plain_forward(loaded.model):
        split_out = export_mod._outputs(loaded.model, loaded.task, inputs)  # collective: every rank
    plain = plain_copy(loaded.model, loaded.task)
    if plain is None:
        return None
    cpu_inputs = {k: v.cpu() for k, v in inputs.items()}
    whole_out = export_mod._outputs(plain, loaded.task, cpu_inputs)
    scale = float(split_out.abs().max().clamp_min(1e-6))
    record = export_mod.save(plain, loaded.tokenizer, loaded.task, artifact_dir, recipe, opt_reports, "cpu")
    record["gathered_from_tp"] = group.world()
    record["tp_vs_gathered_max_rel_error"] = float((whole_out - split_out).abs().max()) / scale
    return record
