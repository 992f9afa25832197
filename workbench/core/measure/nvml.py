"""NVML wrapped once. Every read that is not supported (or any NVML error) becomes None, shown as "n/a"."""

from __future__ import annotations

import threading

_lock = threading.Lock()
_state: dict = {"init": None, "handles": []}


def _nvml():
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def available() -> bool:
    with _lock:
        if _state["init"] is None:
            nv = _nvml()
            try:
                nv.nvmlInit()
                count = nv.nvmlDeviceGetCount()
                _state["handles"] = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
                _state["init"] = True
            except Exception:  # no library, no driver, no GPU: all mean "no NVML"
                _state["init"] = False
        return bool(_state["init"]) and bool(_state["handles"])


def _read(fn, *args):
    try:
        return fn(*args)
    except Exception:  # NVMLError_NotSupported and friends become n/a
        return None


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def driver_version() -> str | None:
    if not available():
        return None
    return _text(_read(_nvml().nvmlSystemGetDriverVersion))


def devices() -> list[dict]:
    """One reading per GPU: utilisation %, memory used/total MiB, temperature C, power W. None where unsupported."""
    if not available():
        return []
    nv = _nvml()
    out = []
    for index, handle in enumerate(_state["handles"]):
        util = _read(nv.nvmlDeviceGetUtilizationRates, handle)
        mem = _read(nv.nvmlDeviceGetMemoryInfo, handle)
        temp = _read(nv.nvmlDeviceGetTemperature, handle, 0)  # NVML_TEMPERATURE_GPU
        power = _read(nv.nvmlDeviceGetPowerUsage, handle)
        out.append({
            "index": index,
            "name": _text(_read(nv.nvmlDeviceGetName, handle)),
            "util_percent": util.gpu if util is not None else None,
            "mem_used_mb": mem.used / 2**20 if mem is not None else None,
            "mem_total_mb": mem.total / 2**20 if mem is not None else None,
            "temp_c": temp,
            "power_w": power / 1000.0 if power is not None else None,
        })
    return out
