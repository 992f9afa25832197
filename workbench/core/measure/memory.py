"""Model size as stored (an int8 weight is 1 byte, its scales count too) and CUDA peak memory."""

from __future__ import annotations


def tensor_bytes(t) -> int:
    """Bytes a tensor really stores, looking inside tensor subclasses (torchao, sparse) and quantized tensors."""
    import torch

    if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, torch.nn.Parameter):
        # a DTensor (tensor parallelism) flattens to its local shard and its device mesh: this rank's shard counts
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(x) for x in (getattr(t, n) for n in names) if isinstance(x, torch.Tensor))
    if t.is_quantized:
        size = t.numel() * t.element_size()
        if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric,
                           torch.per_channel_affine_float_qparams):
            size += t.q_per_channel_scales().numel() * 8 + t.q_per_channel_zero_points().numel() * 8
        else:
            size += 8 + 8
        return size
    if t.is_sparse:
        return tensor_bytes(t._indices()) + tensor_bytes(t._values())
    return t.numel() * t.element_size()


def _packed_linear_tensors(module):
    """Weights of torch.ao dynamic-quantized Linear layers live in packed params, not in parameters()."""
    try:
        from torch.ao.nn.quantized.dynamic import Linear as DynLinear
    except ImportError:  # pragma: no cover - very old torch
        return []
    out = []
    for m in module.modules():
        if isinstance(m, DynLinear):
            w, b = m._weight_bias()
            out.extend(x for x in (w, b) if x is not None)
    return out


def model_size_bytes(model) -> int:
    seen: set[int] = set()
    total = 0
    tensors = list(model.parameters()) + list(model.buffers()) + _packed_linear_tensors(model)
    for t in tensors:
        key, size = id(t), None
        try:
            if (not hasattr(t, "__tensor_flatten__") or type(t).__name__ in ("Tensor", "Parameter")) \
                    and not t.is_quantized:
                # one storage counts once and whole: tied weights, and parameters that are row blocks of one
                # fused weight (graph-decode's fuse)
                storage = t.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        if key in seen:
            continue
        seen.add(key)
        total += size if size is not None else tensor_bytes(t)
    return total


def param_count(model) -> int:
    seen: set[int] = set()
    n = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def cuda_reset(device: str, every: bool = False) -> None:
    """Reset peak statistics of ``device`` (or of every visible GPU, for a model spread over several). The caching
    allocator's free blocks go back to the driver first, so a reserved-memory peak is the phase's own: an in-place
    quantization leaves the float weights' blocks reserved (tune's int4 trial on an 8B model read 16.7 GB reserved
    for 5.8 GB of weights on an H200)."""
    import torch

    if device.startswith("cuda"):
        for d in range(torch.cuda.device_count()) if every else [device]:
            torch.cuda.synchronize(d)
            with torch.cuda.device(d):
                torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(d)


def cuda_peaks_per_device() -> dict:
    """Peak allocated MiB on every visible GPU (keys "cuda:N")."""
    import torch

    out = {}
    for d in range(torch.cuda.device_count()):
        torch.cuda.synchronize(d)
        out[f"cuda:{d}"] = torch.cuda.max_memory_allocated(d) / 2**20
    return out


def cuda_peaks(device: str) -> dict:
    import torch

    if not device.startswith("cuda"):
        return {"cuda_peak_allocated": None, "cuda_peak_reserved": None}
    torch.cuda.synchronize(device)
    return {"cuda_peak_allocated": torch.cuda.max_memory_allocated(device) / 2**20,
            "cuda_peak_reserved": torch.cuda.max_memory_reserved(device) / 2**20}
