"""What can be known about a model reference without torch: the core's resolver and config.json summary, and the
size of the weight files on disk. The full picture (parameter count, loaded dtype) comes from an ``inspect`` job.
"""

from __future__ import annotations

from workbench.core import modelref
from workbench.core.errors import InputError


def detect(ref: str) -> dict:
    """A dict for the model pane; raises InputError (with the core's message) for a bad reference."""
    resolved = modelref.resolve(ref)
    info: dict = {"ref": resolved.ref, "kind": resolved.kind, "task": resolved.task_hint, "hub_id": resolved.hub_id,
                  "gguf_file": resolved.gguf_file}
    if resolved.kind == "demo":
        demo = modelref.DEMOS[resolved.ref[5:]]
        info["title"] = demo.title
        info["license"] = demo.license
    if resolved.path and not resolved.gguf_file:
        from workbench.core.models import config_summary

        try:
            summary = config_summary(resolved.path)
        except (OSError, ValueError) as exc:
            raise InputError(f"--model {ref}: config.json cannot be read ({exc}); expected a model folder") from None
        archs = summary.get("architectures") or []
        info.update(architecture=archs[0] if archs else None, model_type=summary.get("model_type"),
                    layers=summary.get("num_hidden_layers"), hidden_size=summary.get("hidden_size"),
                    heads=summary.get("num_attention_heads"), vocab_size=summary.get("vocab_size"),
                    dtype=summary.get("torch_dtype") or summary.get("dtype"))
        info["task"] = info["task"] or modelref.task_from_config_json(resolved.path)
    if resolved.path:
        try:
            files = resolved.weight_files()
            info["weights_bytes"] = sum(f.stat().st_size for f in files)
            info["weight_files"] = len(files)
        except OSError:
            info["weights_bytes"] = None
    return info
