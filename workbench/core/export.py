"""Export: a folder that loads with plain transformers (safetensors, config, tokenizer) plus the recipe.

Models transformers cannot serialize (torch.ao dynamic INT8) are written in a documented optbench format
(``optbench-int8-dynamic``: int8 weights, scales and zero points in safetensors) with ``load_artifact`` as the
loader. Every export is reloaded and its outputs compared with the in-memory model on a fixed input; a mismatch
is an error and the destination is left as it was.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from workbench import __version__
from workbench.core.errors import InputError, OptbenchError
from workbench.core import export_ct
from workbench.core.export_ct import FORMAT_CT
from workbench.core.optimizations.cpu_runtimes import RUNTIME_FORMATS

MANIFEST = "optbench.json"
VERIFY = "optbench_verify.safetensors"
FORMAT_HF = "transformers"
FORMAT_INT8 = "optbench-int8-dynamic"
FORMAT_RESIZED = "optbench-resized"  # transformers folder whose Linear shapes differ from its config (pruned heads)


class ExportError(OptbenchError):
    kind = "export"


def export_format(opt_reports: list[dict]) -> str:
    custom = set()
    for rep in opt_reports:
        how = rep.get("exportable", "yes")
        if how == "no":
            note = f" ({rep['export_note']})" if rep.get("export_note") else ""
            raise ExportError(f"{rep.get('name')}: this optimization cannot be exported{note}; "
                              f"the session keeps its results but no artifact")
        if how == "custom":
            custom.add(rep.get("export_format", FORMAT_INT8))
    runtime = [f for f in custom if f in RUNTIME_FORMATS]  # ONNX Runtime / OpenVINO: their files hold the graph
    if runtime:
        return runtime[0]
    if FORMAT_CT in custom:
        if len(custom) > 1:  # its config.json is the model's own: no room for resized Linear shapes
            raise ExportError(f"{FORMAT_CT}: cannot hold {', '.join(sorted(custom - {FORMAT_CT}))} too; expected "
                              f"int4-weight-only:export=torchao with it")
        return FORMAT_CT
    if FORMAT_INT8 in custom:  # its loader also restores resized Linear shapes
        return FORMAT_INT8
    return FORMAT_RESIZED if custom else FORMAT_HF


def _fixed_inputs(tokenizer, device: str):
    from workbench.core.measure.timing import fixed_input_ids

    import torch

    ids = fixed_input_ids(tokenizer, 1, 32).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _outputs(model, task: str, inputs):
    import torch

    with torch.inference_mode():
        out = model(**inputs)
    t = out.last_hidden_state if task == "encoder" else out.logits
    return t.float().cpu()


def save(model, tokenizer, task: str, out_dir: Path, recipe: dict, opt_reports: list[dict], device: str) -> dict:
    """Write, reload, compare, then move into place. Returns the verification record."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    fmt = export_format(opt_reports)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        on_disk, after_load = _config_overrides(opt_reports)
        if fmt in (FORMAT_HF, FORMAT_RESIZED):
            with _config_as(model, on_disk):
                model.save_pretrained(tmp, safe_serialization=True)
        elif fmt in RUNTIME_FORMATS:
            from workbench.core.optimizations import _cpu_runtimes

            _cpu_runtimes.save(model, tmp)
        elif fmt == FORMAT_CT:
            export_ct.save(model, tmp)
        else:
            _save_int8_dynamic(model, tmp)
        tokenizer.save_pretrained(tmp)
        inputs = _fixed_inputs(tokenizer, device)
        from workbench.core.optimizations.fastgen import plain_forward

        with plain_forward(model) as fused:  # what the saved weights compute (graph-decode's fused runtime aside)
            expected = _outputs(model, task, inputs)
        runtime_error = None
        if fused:
            got = _outputs(model, task, inputs)
            runtime_error = float((got - expected).abs().max()) / float(expected.abs().max().clamp_min(1e-6))
        save_file({"input_ids": inputs["input_ids"].cpu().contiguous(), "expected": expected.contiguous()},
                  str(tmp / VERIFY))
        manifest = {"format": fmt, "task": task, "optbench": __version__,
                    "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                    "recipe": recipe, "optimizations": opt_reports}
        if fmt == FORMAT_INT8:
            manifest["quantized_modules"] = _int8_module_names(model)
        if after_load:
            manifest["config_after_load"] = after_load
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
        check = verify(tmp, device=_verify_device(model, device))
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    check["path"] = str(out_dir)
    check["format"] = manifest["format"]
    if runtime_error is not None:  # the fused runtime vs the plain layers, same weights, same input
        check["fused_runtime_max_rel_error"] = runtime_error
    check["bytes_on_disk"] = folder_bytes(out_dir)
    return check


def _config_overrides(opt_reports: list[dict]) -> tuple[dict, dict]:
    """Config values an optimization wants written to disk instead of the in-memory ones (a config transformers
    would refuse to save), and the in-memory values the loader sets back after building the model."""
    on_disk, after = {}, {}
    for rep in opt_reports:
        for k, v in (rep.get("config_on_disk") or {}).items():
            on_disk.setdefault(k, v)  # the first (the loaded model's own) value wins
        after.update(rep.get("config_after_load") or {})
    return on_disk, after


class _config_as:
    """Temporarily set config attributes (for save_pretrained), restoring the in-memory values afterwards."""

    def __init__(self, model, values: dict) -> None:
        self.config, self.values, self.old = model.config, values, {}

    def __enter__(self):
        for k, v in self.values.items():
            self.old[k] = getattr(self.config, k)
            setattr(self.config, k, v)

    def __exit__(self, *exc):
        for k, v in self.old.items():
            setattr(self.config, k, v)
        return False


def _verify_device(model, device: str) -> str:
    """Where the export is reloaded and checked: the GPU the model ran on (an 8B model reloaded on the CPU costs its
    weights again in host memory and minutes of CPU forward, and CUDA-only formats such as torchao's tile-packed int4
    do not reload on a CPU at all); the CPU for CPU models and for models spread over several devices."""
    devices = {p.device for p in model.parameters()}
    if str(device).startswith("cuda") and len(devices) == 1:
        return str(next(iter(devices)))
    return "cpu"


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _int8_module_names(model) -> list[str]:
    from torch.ao.nn.quantized.dynamic import Linear as DynLinear

    return [n for n, m in model.named_modules() if isinstance(m, DynLinear)]


def _save_int8_dynamic(model, out: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from torch.ao.nn.quantized.dynamic import Linear as DynLinear

    tensors = {}
    qnames = set(_int8_module_names(model))
    for name, value in model.state_dict().items():
        if name.rpartition(".")[0] in qnames or "_packed_params" in name or not isinstance(value, torch.Tensor) \
                or value.is_quantized:
            continue
        tensors[name] = value.detach().cpu().contiguous()
    for name, m in model.named_modules():
        if isinstance(m, DynLinear):
            w, b = m._weight_bias()
            tensors[f"{name}.weight_int8"] = w.int_repr().contiguous()
            if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                tensors[f"{name}.weight_scale"] = w.q_per_channel_scales().contiguous()
                tensors[f"{name}.weight_zero_point"] = w.q_per_channel_zero_points().contiguous()
                tensors[f"{name}.weight_axis"] = torch.tensor([w.q_per_channel_axis()])
            else:
                tensors[f"{name}.weight_scale"] = torch.tensor([w.q_scale()], dtype=torch.float64)
                tensors[f"{name}.weight_zero_point"] = torch.tensor([w.q_zero_point()], dtype=torch.int64)
            if b is not None:
                tensors[f"{name}.bias"] = b.detach().contiguous()
    # tied weights share storage: safetensors refuses duplicates, so clone them apart
    seen = {}
    for k in list(tensors):
        ptr = tensors[k].untyped_storage().data_ptr()
        if ptr in seen:
            tensors[k] = tensors[k].clone()
        seen[ptr] = k
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": FORMAT_INT8})
    model.config.save_pretrained(out)


def load_artifact(path: Path | str, device: str = "cpu"):
    """Load any optbench export: (model, tokenizer, manifest). Plain-transformers exports need only transformers."""
    import torch
    import transformers

    from workbench.core.models import auto_class

    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise InputError(f"{path}: no {MANIFEST}; expected a folder written by optbench export")
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError as exc:
        raise InputError(f"{manifest_path}: cannot be parsed ({exc})") from None
    task = manifest["task"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    if manifest["format"] == FORMAT_HF:  # onto a GPU straight from the files, not staged in host memory first
        placement = {"device_map": device} if str(device).startswith("cuda") else {}
        model = auto_class(task).from_pretrained(path, dtype="auto", **placement)
    elif manifest["format"] == FORMAT_INT8:
        model = _load_int8_dynamic(path, task, manifest)
    elif manifest["format"] == FORMAT_RESIZED:
        model = _load_resized(path, task)
    elif manifest["format"] == FORMAT_CT:
        model = export_ct.load(path, task, device)
    elif manifest["format"] in RUNTIME_FORMATS:
        from workbench.core.optimizations import _cpu_runtimes

        model = _cpu_runtimes.load(path, task, manifest)
    else:
        raise InputError(f"{manifest_path}: unknown format {manifest['format']!r}")
    for k, v in (manifest.get("config_after_load") or {}).items():  # see _config_overrides
        setattr(model.config, k, v)
    model.eval().to(device)
    return model, tokenizer, manifest


def _load_int8_dynamic(path: Path, task: str, manifest: dict):
    import warnings

    import torch
    import transformers
    from safetensors.torch import load_file
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    from workbench.core.models import auto_class

    config = transformers.AutoConfig.from_pretrained(path)
    model = auto_class(task).from_config(config, dtype=torch.float32)
    tensors = load_file(str(path / "model.safetensors"))
    names = manifest["quantized_modules"]
    shapes = {n: tuple(tensors[f"{n}.weight_int8"].shape) for n in names}
    shapes.update({k[: -len(".weight")]: tuple(v.shape) for k, v in tensors.items() if k.endswith(".weight")})
    _resize_linears(model, shapes, {n for n in names if f"{n}.bias" in tensors}
                    | {k[: -len(".bias")] for k in tensors if k.endswith(".bias")})
    float_state = {k: v for k, v in tensors.items()
                   if not any(k.startswith(n + ".weight_") or k == n + ".bias" for n in names)}
    _, unexpected = model.load_state_dict(float_state, strict=False)  # before quantizing: plain Linear layers
    if unexpected:
        raise InputError(f"{path}: unexpected tensors {unexpected[:3]}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(model, {n: default_dynamic_qconfig for n in names}, dtype=torch.qint8, inplace=True)
    modules = dict(model.named_modules())
    for n in names:
        q = tensors[f"{n}.weight_int8"]
        scale, zp = tensors[f"{n}.weight_scale"], tensors[f"{n}.weight_zero_point"]
        if f"{n}.weight_axis" in tensors:
            w = torch._make_per_channel_quantized_tensor(q, scale.double(), zp.long(),
                                                         int(tensors[f"{n}.weight_axis"][0]))
        else:
            w = torch._make_per_tensor_quantized_tensor(q, float(scale[0]), int(zp[0]))
        modules[n].set_weight_bias(w, tensors.get(f"{n}.bias"))
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    return model


def _resize_linears(model, shapes: dict, with_bias: set) -> None:
    """Replace every nn.Linear whose stored weight shape differs from the config's with one of the stored shape
    (structured pruning), and keep the attention modules' own head counts in step."""
    import torch

    for name, module in list(model.named_modules()):
        if not isinstance(module, torch.nn.Linear) or name not in shapes:
            continue
        out_f, in_f = shapes[name]
        if (out_f, in_f) == tuple(module.weight.shape):
            continue
        new = torch.nn.Linear(in_f, out_f, bias=name in with_bias, dtype=module.weight.dtype)
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, new)
        head = getattr(owner, "attention_head_size", None)
        if head and child == "query":  # BERT-style self-attention
            owner.num_attention_heads = out_f // head
            owner.all_head_size = out_f


def _no_init():
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            import contextlib

            return contextlib.nullcontext()
    return no_init_weights()


def _load_resized(path: Path, task: str):
    import torch
    import transformers
    from safetensors.torch import load_file

    from workbench.core.models import auto_class

    config = transformers.AutoConfig.from_pretrained(path)
    tensors = {}
    for f in sorted(path.glob("*.safetensors")):
        if f.name != VERIFY:
            tensors.update(load_file(str(f)))
    dtype = next(v.dtype for v in tensors.values() if v.is_floating_point())
    with _no_init():  # every weight is about to be replaced: random init of an 8B model on a CPU takes minutes
        model = auto_class(task).from_config(config, dtype=dtype)
    shapes = {k[: -len(".weight")]: tuple(v.shape) for k, v in tensors.items() if k.endswith(".weight")}
    _resize_linears(model, shapes, {k[: -len(".bias")] for k in tensors if k.endswith(".bias")})
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = getattr(config, "tie_word_embeddings", False)
    missing = [m for m in missing if not (tied and m.endswith(("lm_head.weight", "decoder.weight")))]
    if missing or unexpected:
        raise InputError(f"{path}: weights do not match the model (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]})")
    if tied:
        model.tie_weights()
    return model


QUANTIZED_ACTIVATION_TOLERANCE = 5e-2  # see verify
HALF_TOLERANCE = 1e-2
FLOAT_TOLERANCE = 1e-4


def _quantizes_activations(names) -> bool:
    """Whether any of these optimizations (by name, as a manifest records them) rounds activations to a grid at run
    time (``OptSpec.quantizes_activations``). A name this version does not register counts as not quantizing."""
    from workbench.core.optimizations import all_specs

    specs = {s.name: s for s in all_specs()}
    return any(specs[n].quantizes_activations for n in names if n in specs)


def verify(path: Path | str, device: str = "cpu") -> dict:
    """Reload the export and compare its outputs with those recorded from the in-memory model at export time."""
    from safetensors.torch import load_file

    path = Path(path)
    model, tokenizer, manifest = load_artifact(path, device)
    ref = load_file(str(path / VERIFY))
    import torch

    ids = ref["input_ids"].to(device)
    got = _outputs(model, manifest["task"], {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    expected = ref["expected"]
    scale = float(expected.abs().max().clamp_min(1e-6))
    err = float((got - expected).abs().max()) / scale
    half = manifest.get("dtype") in ("float16", "bfloat16")
    # Activations quantized at run time round to a grid: a last-bit difference between the saving and the reloading
    # kernels (another device, another GEMM) can move a value across a step, so those formats get a looser bound.
    # (The CPU runtimes' int8 too: a reduction-order difference can cross a step.)
    dynamic = _quantizes_activations(o.get("name") for o in manifest.get("optimizations") or [])
    tol = QUANTIZED_ACTIVATION_TOLERANCE if dynamic else HALF_TOLERANCE if half else FLOAT_TOLERANCE
    ok = bool(torch.isfinite(got).all()) and got.shape == expected.shape and err <= tol
    record = {"verified": ok, "max_rel_error": err, "tolerance": tol}
    if not ok:
        raise ExportError(f"{path}: reloaded outputs differ from the in-memory model (max relative error "
                          f"{err:.2e} > {tol:.0e}); the export is not trustworthy")
    return record


def copy_and_verify(src: Path, out_dir: Path) -> dict:
    """``optbench export``: copy a session's artifact to a new folder, then verify it there."""
    src, out_dir = Path(src), Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    try:
        check = verify(tmp)
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    check["path"] = str(out_dir)
    check["bytes_on_disk"] = folder_bytes(out_dir)
    return check
