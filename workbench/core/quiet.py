"""Library noise out of the terminal: known messages that say nothing about the user's model are dropped.

Without this every command printed, before anything useful, torchao's "Failed to load …/_C_mxfp8….so" (CUDA-only
extensions on a CPU build), torch's pytree ``register_constant()`` deprecation (torchao registering its enums) and
transformers' "`torch_dtype` is deprecated" (old config.json files), plus transformers' and the hub's progress bars.
Only those exact messages are moved, by a filter on the logger that emits each; every other warning — about the
user's model, its weights, its config — still reaches the terminal. ``-v`` (``OPTBENCH_VERBOSE=1``, inherited by
job processes) shows everything. Nothing is written to disk (a command that fails on bad input changes nothing).

Torch-free: it only attaches ``logging`` filters to loggers by name (they exist before their libraries import).
"""

from __future__ import annotations

import logging
import os

# (logger name, a fragment of the message): the logger that emits it, so nothing else is touched
NOISE = (
    ("torchao", "Failed to load "),
    ("torch.utils._pytree", "is an Enum subclass"),
    ("transformers.configuration_utils", "`torch_dtype` is deprecated"),
    ("transformers.modeling_utils", "`torch_dtype` is deprecated"),
)
VERBOSE_ENV = "OPTBENCH_VERBOSE"
_installed: list[tuple[logging.Logger, logging.Filter]] = []
dropped: dict[str, int] = {}  # logger name -> messages kept out of the terminal


class _Divert(logging.Filter):
    """Drops the records whose message contains one of ``fragments``; counts them (``dropped``)."""

    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        if not any(f in message for f in self.fragments):
            return True
        dropped[record.name] = dropped.get(record.name, 0) + 1
        return False


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet_libraries() -> bool:
    """Install the filters (once) unless verbose. Returns whether library noise is now diverted."""
    if verbose():
        return False
    if not _installed:
        by_logger: dict[str, list[str]] = {}
        for name, fragment in NOISE:
            by_logger.setdefault(name, []).append(fragment)
        for name, fragments in by_logger.items():
            logger = logging.getLogger(name)
            flt = _Divert(tuple(fragments))
            logger.addFilter(flt)
            _installed.append((logger, flt))
        # transformers' and huggingface_hub's tqdm bars (transformers reads this when it is imported)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return True
