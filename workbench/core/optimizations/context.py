"""What an apply function gets besides the model: device, task, tokenizer, and a way to report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass
class ApplyContext:
    device: str
    task: str
    tokenizer: object = None
    log: Callable[[str], None] = lambda text: None
    progress: Callable[..., None] = lambda frac, **extra: None  # extra: step, loss, ... (training curves)
    eval_settings: object = None
    extra: dict = field(default_factory=dict)
    warn: Callable[[str], None] | None = None  # a warning the user sees (CLI stderr, TUI log); else logged

    def warning(self, text: str) -> None:
        (self.warn or self.log)(text)


def linear_modules(model, skip_head: bool = True):
    """(name, module) of every nn.Linear inside the model, the output head optionally left out."""
    import torch

    head_names = set()
    if skip_head:
        out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        for name, module in model.named_modules():
            if module is out or name.split(".")[-1] in ("lm_head", "classifier", "score"):
                head_names.add(name)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in head_names]
