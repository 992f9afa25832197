"""Loading models (demo, folder, GGUF, Hugging Face id), detecting the task, describing what was loaded."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from workbench.core.errors import InputError
from workbench.core.modelref import ResolvedRef, resolve

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    task: str
    ref: ResolvedRef
    device: str
    fingerprint: str
    generate_kwargs: dict = field(default_factory=dict)  # set by runtime optimizations (e.g. a static cache)

    def info(self) -> dict:
        return describe(self.model, self.task, self.ref, self.device, self.fingerprint)


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"{device}: no CUDA GPU is visible here; expected device cpu or auto", param="device")
    return device


def detect_task(config) -> str:
    archs = list(getattr(config, "architectures", None) or [])
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "seq-cls"
    if any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs):
        return "causal-lm"
    if archs:
        return "encoder"
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if getattr(config, "model_type", None) in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not getattr(
            config, "is_encoder_decoder", False) and config.model_type not in ("bert", "roberta", "xlm-roberta"):
        return "causal-lm"
    return "encoder"


def auto_class(task: str):
    import transformers

    return {
        "causal-lm": transformers.AutoModelForCausalLM,
        "seq-cls": transformers.AutoModelForSequenceClassification,
        "encoder": transformers.AutoModel,
    }[task]


_PIECE = 64 << 20  # fingerprint pieces: hashed in parallel (hashlib releases the GIL), combined in order


def _piece_digest(path: Path, start: int) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(start)
        left = _PIECE
        while left > 0:
            chunk = fh.read(min(1 << 22, left))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.digest()


def _file_digest(path: Path) -> str:
    """sha256 over the sha256 of each 64 MiB piece of the file: every byte counts, read by several threads (an 8B
    model's 16 GB took minutes of one core before). Remembered per (path, size, mtime) in the cache folder, so a
    second load of the same folder does not read it again."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    st = path.stat()
    memo_key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    memo = _fingerprint_memo()
    if memo_key in memo:
        return memo[memo_key]
    starts = list(range(0, max(1, st.st_size), _PIECE))
    with ThreadPoolExecutor(max_workers=min(len(starts), os.cpu_count() or 1, 16)) as pool:
        pieces = list(pool.map(lambda s: _piece_digest(path, s), starts))
    digest = hashlib.sha256(b"".join(pieces)).hexdigest()
    if st.st_size >= _PIECE:  # small files are cheaper to hash than to look up
        _remember_fingerprint(memo_key, digest)
    return digest


def memo_path() -> Path:
    from workbench.core.cache import cache_dir

    return cache_dir() / "fingerprints.json"


def _fingerprint_memo() -> dict:
    try:
        return json.loads(memo_path().read_text())
    except (OSError, ValueError):
        return {}


def _remember_fingerprint(memo_key: str, digest: str) -> None:
    from workbench.core import atomic

    try:
        memo = _fingerprint_memo()
        memo[memo_key] = digest
        if len(memo) > 4096:  # keep the newest entries
            memo = dict(list(memo.items())[-2048:])
        atomic.write_json(memo_path(), memo)
    except OSError:  # a read-only cache folder only costs the next load a re-hash
        pass


def fingerprint(ref: ResolvedRef, config=None) -> str:
    """Content hash of the weight files (local), or hub id + commit. Keys the baseline cache."""
    files = ref.weight_files()
    if files:
        h = hashlib.sha256()
        for path in files:
            h.update(path.name.encode())
            h.update(_file_digest(path).encode())
        return "sha256:" + h.hexdigest()[:32]
    commit = getattr(config, "_commit_hash", None) if config is not None else None
    return f"hub:{ref.hub_id}@{commit or 'unknown'}"


def load(ref_text: str, task: str | None = None, device: str = "auto", trust_remote_code: bool = False,
         revision: str | None = None, device_map: str | None = None,
         on_progress: Callable[[float], None] | None = None, tp: int | None = None) -> LoadedModel:
    """Load a model for ``task`` onto ``device``. ``device_map`` (auto, balanced, ...) spreads it over every visible
    GPU with accelerate instead; inputs then go to the device of the first module (the embeddings). ``tp`` (inside a
    rank of a tensor-parallel job, core/parallel/) loads this rank's shards with transformers' own plan.
    ``on_progress(fraction)``: how far a GGUF file's tensors are dequantized (the slow part of loading one)."""
    import torch
    import transformers

    from workbench.core.parallel import group

    ref = resolve(ref_text)
    dev = group.device() if tp else pick_device(device)
    if device_map is not None and not dev.startswith("cuda"):
        raise InputError(f"{device_map}: needs CUDA GPUs; expected device cuda on a GPU machine", param="device_map")
    source = ref.path if ref.path else ref.hub_id
    common = {"trust_remote_code": trust_remote_code}
    if revision:
        common["revision"] = revision
    if ref.gguf_file:
        common["gguf_file"] = ref.gguf_file
    try:
        config = transformers.AutoConfig.from_pretrained(source, **common)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{ref_text}: could not read its config ({_first_line(exc)}); expected a transformers "
                         f"model", param="model") from None
    task = task or ref.task_hint or detect_task(config)
    if tp:
        from workbench.core.parallel.gather import tp_placement

        placement_kw = tp_placement(config, tp, ref_text)
    # CPU runs in float32 (half precision on CPU is an optimization the user picks); CUDA keeps the stored dtype.
    dtype = torch.float32 if dev == "cpu" else "auto"
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=1)
    try:
        # The tokenizer is read while the weights load (a 3.5 MB tokenizer.json took ~0.25 s, a fifth of what
        # separated optbench's load of an 8B model from a plain from_pretrained on an H200).
        tok_future = pool.submit(transformers.AutoTokenizer.from_pretrained, source, **common)
        # A single GPU: straight from the safetensors mmap onto the device in the stored dtype (a load to CPU then
        # .to(cuda) stages the whole model in host memory first: an 8B model's 16 GB twice).
        placement = placement_kw if tp else {"device_map": device_map} if device_map else \
            {"device_map": dev} if dev.startswith("cuda") else {}
        with _gguf_progress(on_progress if ref.gguf_file else None):
            model = auto_class(task).from_pretrained(source, config=config, dtype=dtype, **placement, **common)
        tokenizer = tok_future.result()
    except Exception as exc:  # safetensors, GGUF and pickle readers raise many types; all mean "bad weights"
        if isinstance(exc, (torch.OutOfMemoryError, MemoryError, InputError)) or group.is_peer_loss(exc):
            raise
        raise InputError(f"{ref_text}: could not load its weights ({_first_line(exc)}); expected an intact model "
                         f"for task {task}", param="model") from None
    finally:
        pool.shutdown(wait=True)
    if ref.gguf_file:
        model = _strip_gguf_quantizer(model, task)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.eval()
    if device_map:  # inputs go where the embeddings are
        dev = str(model.get_input_embeddings().weight.device)
    elif not tp:  # a tensor-parallel model's shards are on this rank's device already
        model.to(dev)
    # the fingerprint keys rank 0's baseline cache; the other ranks need none (and would each read every weight)
    fp = fingerprint(ref, config) if group.rank() == 0 else "rank"
    return LoadedModel(model, tokenizer, task, ref, dev, fp)


@contextlib.contextmanager
def _gguf_progress(on_progress: Callable[[float], None] | None):
    """Report transformers' GGUF dequantization loop (its tqdm over the file's tensors) to ``on_progress``, in steps
    of at least 1 %. Progress bars are off in optbench, so the loop is otherwise silent for the minutes a large file
    takes."""
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        gguf_utils = None
    if on_progress is None or gguf_utils is None or not hasattr(gguf_utils, "tqdm"):
        yield
        return
    original = gguf_utils.tqdm

    def tracked(iterable, *args, **kwargs):
        items = list(iterable)
        shown = 0.0
        for i, item in enumerate(items, 1):
            yield item
            fraction = i / len(items)
            if fraction - shown >= 0.01 or i == len(items):
                shown = fraction
                on_progress(fraction)

    gguf_utils.tqdm = tracked
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def _strip_gguf_quantizer(model, task: str):
    """A GGUF-loaded model refuses save_pretrained; rebuild it from its config without the quantization config."""
    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    state = model.state_dict()
    dtype = next(model.parameters()).dtype
    clean = auto_class(task).from_config(config, dtype=dtype)
    missing, unexpected = clean.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("lm_head.weight")]  # tied to the embeddings
    if missing or unexpected:
        raise InputError(f"GGUF rebuild mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if getattr(config, "tie_word_embeddings", False):
        clean.tie_weights()
    del state
    return clean


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:240]


def describe(model, task: str, ref: ResolvedRef, device: str, fp: str) -> dict:
    from workbench.core.measure.memory import model_size_bytes, param_count

    config = model.config
    first = next(model.parameters())
    return {
        "ref": ref.ref,
        "source": ref.kind,
        "path": ref.path,
        "gguf_file": ref.gguf_file,
        "architecture": (getattr(config, "architectures", None) or [type(model).__name__])[0],
        "model_type": getattr(config, "model_type", None),
        "task": task,
        "parameters": param_count(model),
        "dtype": str(first.dtype).replace("torch.", ""),
        "size_mb": model_size_bytes(model) / 1e6,
        "layers": getattr(config, "num_hidden_layers", None),
        "hidden_size": getattr(config, "hidden_size", None),
        "heads": getattr(config, "num_attention_heads", None),
        "vocab_size": getattr(config, "vocab_size", None),
        "device": device,
        "placement": placement(model),
        "fingerprint": fp,
    }


def placement(model) -> dict | None:
    """Parameters (millions) and bytes per device when the model spans several devices, else None."""
    devices: dict[str, list[float]] = {}
    for p in model.parameters():
        d = devices.setdefault(str(p.device), [0.0, 0.0])
        d[0] += p.numel() / 1e6
        d[1] += p.numel() * p.element_size() / 2**20
    if len(devices) < 2:
        return None
    return {k: {"params_m": round(v[0], 3), "mb": round(v[1], 1)} for k, v in sorted(devices.items())}


def config_summary(path: str) -> dict:
    """Cheap, torch-free look at a folder's config.json (for the UI before anything heavy runs)."""
    cfg = json.loads((Path(path) / "config.json").read_text())
    return {k: cfg.get(k) for k in ("architectures", "model_type", "num_hidden_layers", "hidden_size",
                                     "num_attention_heads", "vocab_size", "torch_dtype", "dtype")}
