"""What a number was measured on: written beside every result."""

from __future__ import annotations

import os
import platform
import sys

import psutil

from workbench import __version__
from workbench.core.measure import cpu as cpu_isa
from workbench.core.measure import nvml


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def environment(device: str | None = None) -> dict:
    """Host, library versions and (when torch is already imported) device details."""
    isa = cpu_isa.describe()
    env = {
        "optbench": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": isa["model"],
        "cpu_isa": isa,
        "cpu_count": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "torchao": _version("torchao"),
        "driver": nvml.driver_version(),
        "device": device,
    }
    if "torch" in sys.modules:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        env["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if device and device.startswith("cuda"):
                idx = torch.device(device).index or 0
                env["device_name"] = torch.cuda.get_device_name(idx)
                major, minor = torch.cuda.get_device_capability(idx)
                env["compute_capability"] = f"{major}.{minor}"
        else:
            env["device_name"] = env["cpu"]
    return {k: v for k, v in env.items() if v is not None}
