"""Library noise out of the terminal: known messages that say nothing about the user's model go to a log file.

Without this every command printed, before anything useful, torchao's "Failed to load …/_C_mxfp8….so" (CUDA-only
extensions on a CPU build), torch's pytree ``register_constant()`` deprecation (torchao registering its enums) and
transformers' "`torch_dtype` is deprecated" (old config.json files), plus transformers' and the hub's progress bars.
Only those exact messages are moved, by a filter on the logger that emits each; every other warning — about the
user's model, its weights, its config — still reaches the terminal. ``-v`` (``OPTBENCH_VERBOSE=1``, inherited by
job processes) shows everything; the moved lines are appended to ``log_path()`` either way.

Torch-free: it only attaches ``logging`` filters to loggers by name (they exist before their libraries import).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

# (logger name, a fragment of the message): the logger that emits it, so nothing else is touched
NOISE = (
    ("torchao", "Failed to load "),
    ("torch.utils._pytree", "is an Enum subclass"),
    ("transformers.configuration_utils", "`torch_dtype` is deprecated"),
    ("transformers.modeling_utils", "`torch_dtype` is deprecated"),
)
VERBOSE_ENV = "OPTBENCH_VERBOSE"
_installed: list[tuple[logging.Logger, logging.Filter]] = []


def log_path() -> Path:
    from workbench.core.cache import cache_dir

    return cache_dir() / "logs" / "library.log"


class _Divert(logging.Filter):
    """Drops the records whose message contains one of ``fragments``, appending them to the log file."""

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
        try:
            path = log_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pid {os.getpid()} {record.levelname} "
                         f"{record.name}: {message}\n")
        except OSError:
            pass  # a log file that cannot be written must not break a run
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
