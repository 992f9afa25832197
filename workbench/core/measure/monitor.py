"""A background sampler of CPU %, process RSS, system memory and per-GPU readings, at a configurable rate.

It keeps the peak RSS (and per-GPU peak memory used) since the last ``reset_peaks()``, so a phase's peak is known.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable

import psutil

from workbench.core.measure import nvml


class Monitor:
    def __init__(self, hz: float = 4.0, on_sample: Callable[[dict], None] | None = None, gpus: bool = True) -> None:
        if not 0 < hz <= 1000:
            raise ValueError("hz must be in (0, 1000]")
        self.interval = 1.0 / hz
        self.on_sample = on_sample
        self.gpus = gpus and nvml.available()
        self.process = psutil.Process(os.getpid())
        self.process.cpu_percent(None)  # prime: the first call always returns 0
        psutil.cpu_percent(None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.samples_taken = 0
        self.last: dict | None = None
        self.reset_peaks()

    def reset_peaks(self) -> None:
        with getattr(self, "_lock", threading.Lock()):
            self.rss_peak = self.process.memory_info().rss
            self.gpu_used_peak: dict[int, float] = {}

    def sample(self) -> dict:
        rss = self.process.memory_info().rss
        vm = psutil.virtual_memory()
        reading = {
            "time": time.time(),
            "cpu_percent": self.process.cpu_percent(None),
            "system_cpu_percent": psutil.cpu_percent(None),
            "rss_mb": rss / 2**20,
            "sys_mem_used_mb": (vm.total - vm.available) / 2**20,
            "sys_mem_total_mb": vm.total / 2**20,
            "gpus": nvml.devices() if self.gpus else [],
        }
        with self._lock:
            self.rss_peak = max(self.rss_peak, rss)
            for g in reading["gpus"]:
                if g["mem_used_mb"] is not None:
                    self.gpu_used_peak[g["index"]] = max(self.gpu_used_peak.get(g["index"], 0.0), g["mem_used_mb"])
            self.samples_taken += 1
            self.last = reading
        return reading

    def _loop(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            reading = self.sample()
            if self.on_sample is not None:
                try:
                    self.on_sample(reading)
                except Exception:  # a broken consumer must not kill the sampler
                    pass
            next_t += self.interval
            delay = next_t - time.monotonic()
            if delay < 0:  # fell behind: do not pile up, re-arm from now
                next_t = time.monotonic()
                delay = 0
            self._stop.wait(delay)

    def start(self) -> "Monitor":
        self._thread = threading.Thread(target=self._loop, name="optbench-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def __enter__(self) -> "Monitor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def peaks(self) -> dict:
        self.sample()
        with self._lock:
            return {"rss_peak_mb": self.rss_peak / 2**20,
                    "gpu_used_peak_mb": dict(self.gpu_used_peak) if self.gpu_used_peak else None}
