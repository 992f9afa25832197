"""Inside a rank of a tensor-parallel job: the process group, and the decisions every rank must take together.

Every rank runs the same job program on the same spec, so every rank makes the same calls in the same order; the
collectives inside each forward (the all-reduces of the split layers) only meet if that stays true. Anything decided
from one process's view (a clock, a cache file) is decided by rank 0 and broadcast: ``agree`` (the bench loop's
stop rule), ``from_rank0`` (the baseline cache). Outside a tensor-parallel job every function here is the identity.
torch is imported inside the functions.
"""

from __future__ import annotations

import os
import signal
import sys

_device: str | None = None


def rank_setup() -> int:
    """First thing in a rank's job process: SIGTERM ends it at once (torchrun and cancel both send it; a rank blocked
    in a collective would never run a Python handler), and it dies with torchrun (PR_SET_PDEATHSIG) so no rank
    outlives a killed launcher. Returns this rank's number."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
        if os.getppid() == 1:  # torchrun already gone before the line above
            os._exit(1)
    return int(os.environ.get("RANK", "0"))


def spec_device(spec: dict) -> str:
    return str((spec.get("recipe") or {}).get("device") or spec.get("device") or "auto")


def init(device: str = "auto") -> str:
    """Join the job's process group: NCCL with one GPU per rank (``cuda:LOCAL_RANK``) on CUDA, gloo on CPU.
    Returns this rank's device."""
    global _device
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        from workbench.core.errors import InputError

        raise InputError(f"{device}: no CUDA GPU is visible here; expected device cpu or auto", param="device")
    if cuda:
        torch.cuda.set_device(local)
        _device = f"cuda:{local}"
        # a 70B model's load takes minutes with skew between ranks: the default 10-minute watchdog is too short
        dist.init_process_group("nccl", device_id=torch.device("cuda", local), timeout=timedelta(hours=1))
    else:
        _device = "cpu"
        dist.init_process_group("gloo", timeout=timedelta(hours=1))
    return _device


def active() -> bool:
    if "torch" not in sys.modules:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    if not active():
        return 0
    import torch.distributed as dist

    return dist.get_rank()


def world() -> int:
    if not active():
        return 1
    import torch.distributed as dist

    return dist.get_world_size()


def device() -> str | None:
    """This rank's device (None outside a tensor-parallel job)."""
    return _device if active() else None


def backend() -> str | None:
    if not active():
        return None
    import torch.distributed as dist

    return str(dist.get_backend())


def agree(code: int) -> int:
    """Rank 0's ``code`` on every rank (a small int: a loop's continue/stop decision)."""
    if not active():
        return code
    import torch
    import torch.distributed as dist

    t = torch.tensor([int(code)], dtype=torch.int64, device=_device or "cpu")
    dist.broadcast(t, src=0)
    return int(t.item())


def from_rank0(make):
    """``make()`` evaluated on rank 0 only, its (picklable) value on every rank."""
    if not active():
        return make()
    import torch.distributed as dist

    box = [make() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not active():
        return [obj]
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def is_peer_loss(exc: BaseException) -> bool:
    """An error a rank gets because another rank is gone (its connection closed, the collective aborted): the job's
    error is then the other rank's, not this one."""
    name = type(exc).__name__
    text = str(exc)
    return name in ("DistBackendError", "DistNetworkError") or (
        isinstance(exc, RuntimeError) and any(s in text for s in (
            "Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted",
            "ProcessGroupGloo", "gloo/transport")))


def finish() -> None:
    if active():
        import torch.distributed as dist

        dist.destroy_process_group()
