"""What a recipe with a tensor-parallel degree (``ModelSpec.tp``) may hold, checked before launching. Torch-free.

- the degree: an integer >= 2 that divides the model's attention heads and KV heads (each rank holds whole heads);
- not with a device_map (two ways to spread one model: pick one), not on one named GPU (``cuda:N``: the ranks take
  GPUs 0..N-1);
- every optimization must declare that it composes (``OptSpec.tp_ok``); the others are refused with their
  ``tp_reason``;
- on CUDA, at least N visible GPUs.
"""

from __future__ import annotations

import json
from pathlib import Path

from workbench.core.errors import InputError

MAX_TP = 64


def check_degree(tp) -> None:
    if isinstance(tp, bool) or not isinstance(tp, int) or not 2 <= tp <= MAX_TP:
        raise InputError(f"{tp!r}: a tensor-parallel degree is the number of processes (GPUs) every layer is split "
                         f"over; expected an integer in [2, {MAX_TP}]", param="tp")


def check_recipe(recipe) -> None:
    """The checks that need only the recipe (Recipe.validate calls this)."""
    from workbench.core import optimizations

    tp = recipe.model.tp
    if tp is None:
        return
    check_degree(tp)
    if recipe.model.device_map is not None:
        raise InputError(f"{tp}: tensor parallelism and a device_map ({recipe.model.device_map}) are two ways to "
                         f"spread one model over GPUs; expected one of them", param="tp")
    if recipe.device.startswith("cuda:"):
        raise InputError(f"{tp}: the {tp} ranks take GPUs 0..{tp - 1}; expected device cuda, cpu or auto, not "
                         f"{recipe.device}", param="tp")
    for step in recipe.optimizations:
        spec = optimizations.get(step.name)
        if not spec.tp_ok:
            ok = ", ".join(s.name for s in composing())
            raise InputError(f"{spec.name}: does not compose with tensor parallelism: {spec.tp_reason}; expected "
                             f"one of {ok} with tp, or this optimization without tp", param="opt")


def composing() -> list:
    """The optimizations that compose with tensor parallelism."""
    from workbench.core import optimizations

    return [s for s in optimizations.all_specs() if s.tp_ok]


def heads_of(config: dict) -> tuple[int | None, int | None]:
    """(attention heads, KV heads) from a config.json's dict (a multimodal model's text_config when present)."""
    cfg = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    heads = cfg.get("num_attention_heads") or cfg.get("n_head") or cfg.get("num_heads")
    kv = cfg.get("num_key_value_heads") or heads
    return heads, kv


def check_heads(tp: int, heads: int | None, kv_heads: int | None, ref: str) -> None:
    """Each rank holds whole attention heads and whole KV heads: the degree must divide both."""
    if heads is None:
        return
    for what, n in (("attention heads", heads), ("KV heads", kv_heads)):
        if n is not None and n % tp:
            ok = [d for d in range(2, min(heads, MAX_TP) + 1) if heads % d == 0 and (kv_heads or heads) % d == 0]
            raise InputError(f"{tp}: {ref} has {n} {what}, which {tp} ranks cannot split evenly; expected a degree "
                             f"that divides its {heads} attention heads and {kv_heads} KV heads"
                             f"{': ' + ', '.join(map(str, ok)) if ok else ' (none does: run it without tp)'}",
                             param="tp")


def check_model(recipe, ref) -> None:
    """The checks that read the model's reference and config.json (no torch): not a GGUF file, heads divisible by
    the degree. ``ref``: the resolved reference (modelref.resolve)."""
    tp = recipe.model.tp
    if tp is None:
        return
    if ref.gguf_file:
        raise InputError(f"{tp}: {recipe.model.ref} is a GGUF file, which loads dequantized into one process; "
                         f"expected a transformers folder or hub id with tp", param="tp")
    if not ref.path:
        return  # a hub id: its config is read by the ranks when they load it
    cfg_file = Path(ref.path) / "config.json"
    try:
        config = json.loads(cfg_file.read_text())
    except (OSError, ValueError):
        return  # the loader reports a missing or unreadable config
    heads, kv = heads_of(config)
    check_heads(tp, heads, kv, recipe.model.ref)


def check_gpus(recipe, visible: int) -> None:
    """On CUDA (device cuda, or auto on a machine with GPUs) the degree cannot exceed the visible GPUs."""
    tp = recipe.model.tp
    if tp is None or recipe.device == "cpu" or (recipe.device == "auto" and visible == 0):
        return
    if visible < tp:
        raise InputError(f"{tp}: one rank per GPU needs {tp} GPUs and {visible} {'is' if visible == 1 else 'are'} "
                         f"visible; expected a degree of at most {visible}, or device cpu (gloo)", param="tp")
