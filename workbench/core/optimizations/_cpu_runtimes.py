"""The work behind ``cpu_runtimes``: export, quantize, build the runtime session, the model wrapper, and the export
folder's save / load (``workbench.core.export`` dispatches here for the ``optbench-onnx`` / ``optbench-openvino``
formats).

Imported only inside apply functions and export's format dispatch (it imports torch, numpy and, lazily, the
runtimes). The runtime files are written first and the session is built from them, so the in-memory model of the
run and the reloaded export are the same files under the same settings.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import shutil
import tempfile
import time
import weakref
from pathlib import Path

import torch

from workbench.core.errors import InputError
from workbench.core.optimizations.base import Applied
from workbench.core.optimizations.cpu_runtimes import FORMAT_ONNX, FORMAT_OPENVINO, RUNTIME_OPTS

ONNX_FILE = "onnx/model.onnx"
OV_XML = "openvino/openvino_model.xml"
OV_BIN = "openvino/openvino_model.bin"
RUNTIME_JSON = "optbench_runtime.json"  # how the session was built (settings), read back by ``load``

_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
           "layout": "ORT_ENABLE_LAYOUT", "all": "ORT_ENABLE_ALL"}


# ------------------------------------------------------------------ checks

def refuse(model, ctx, name: str) -> None:
    """One-line InputErrors before any work: wrong task, wrong device, or a model that is not plain float32."""
    if ctx.task == "causal-lm":
        raise InputError(f"{name}: ONNX Runtime / OpenVINO runtimes here run encoders and classifiers; causal "
                         f"LMs need a KV-cache export (optimum-onnx / OpenVINO GenAI), which is not built; expected a "
                         f"model of task encoder or seq-cls", param="opt")
    if not str(ctx.device).startswith("cpu"):
        raise InputError(f"{name}: runs on the CPU only; expected device cpu, not {ctx.device}", param="opt")
    if isinstance(model, RuntimeModel):
        raise InputError(f"{name}: the model already runs on {model.runtime['kind']}; expected one runtime "
                         f"step per recipe", param="opt")
    dtypes = {p.dtype for p in model.parameters()}
    quantized = [n for n, m in model.named_modules() if type(m).__module__.startswith("torch.ao.nn.quantized")]
    subclass = any(type(p.data) not in (torch.Tensor, torch.nn.Parameter) for p in model.parameters())
    if dtypes != {torch.float32} or quantized or subclass:
        raise InputError(f"{name}: expects the float32 torch model (this one holds "
                         f"{', '.join(sorted(str(d).replace('torch.', '') for d in dtypes))}"
                         f"{', torch-quantized modules' if quantized or subclass else ''}); quantize with "
                         f"onnx-int8 / openvino-int8 instead of a torch quantization step", param="opt")


def cpu_features() -> dict:
    """The instruction sets the runtimes' int8/bf16 kernels depend on (``measure.cpu`` where present)."""
    try:
        from workbench.core.measure import cpu

        d = cpu.describe()
        # usable, not only present: ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA caps pick the AVX2 recipe on an AVX-512
        # machine (ONNX Runtime's MLAS itself still dispatches on cpuid; OpenVINO's oneDNN nodes follow the cap)
        avx512 = d["avx512"] and str(d.get("torch_capability") or "").upper() == "AVX512" and \
            str(d.get("onednn_max_isa") or "").upper() not in ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2")
        return {"avx2": d["avx2"], "avx512": avx512, "vnni": d["int8_vnni"], "bf16": d["bf16_native"],
                "summary": d.get("summary")}
    except ImportError:  # pragma: no cover - measure.cpu is part of the package
        flags = set()
        with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
        return {"avx2": "avx2" in flags, "avx512": "avx512f" in flags,
                "vnni": bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags),
                "bf16": bool({"avx512_bf16", "amx_bf16"} & flags), "summary": None}


def _threads(params: dict) -> int:
    return params["threads"] or torch.get_num_threads()


# ------------------------------------------------------------------ the wrapper the harness calls

class RuntimeModel(torch.nn.Module):
    """An ONNX Runtime session or OpenVINO compiled model behind the transformers calling convention.

    ``parameters()`` yields one placeholder on the meta device whose byte size is the runtime files' size and
    whose dtype is what the weights are stored as (float32, int8), so the harness's size and dtype reports hold.
    """

    def __init__(self, runner, config, task: str, input_names: list[str], runtime: dict, size_bytes: int,
                 dtype: torch.dtype, folder: Path) -> None:
        super().__init__()
        self.config = config
        self.task = task
        self.input_names = list(input_names)
        self.runtime = runtime
        self.folder = Path(folder)  # the runtime files (onnx/ or openvino/)
        self._runner = runner
        itemsize = torch.empty((), dtype=dtype).element_size()
        self.size_placeholder = torch.nn.Parameter(
            torch.empty(max(1, size_bytes // itemsize), dtype=dtype, device="meta"), requires_grad=False)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return self.size_placeholder.dtype

    def to(self, *args, **kwargs):  # the runtime owns its memory; only the CPU is possible
        device = kwargs.get("device", args[0] if args and not isinstance(args[0], torch.dtype) else None)
        if device is not None and torch.device(device).type != "cpu":
            raise InputError(f"{self.runtime['kind']}: runs on the CPU only; expected device cpu, not {device}")
        return self

    def cpu(self):
        return self

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **_ignored):
        import numpy as np
        from transformers.modeling_outputs import BaseModelOutput, SequenceClassifierOutput

        ids = input_ids.cpu()
        given = {"input_ids": ids,
                 "attention_mask": attention_mask.cpu() if attention_mask is not None else torch.ones_like(ids),
                 "token_type_ids": token_type_ids.cpu() if token_type_ids is not None else torch.zeros_like(ids)}
        feed = {n: np.ascontiguousarray(given[n].numpy(), dtype=np.int64) for n in self.input_names}
        out = torch.from_numpy(self._runner(feed))
        if self.task == "encoder":
            return BaseModelOutput(last_hidden_state=out)
        return SequenceClassifierOutput(logits=out)


def _file_bytes(folder: Path, sub: str) -> int:
    return sum(p.stat().st_size for p in (folder / sub).rglob("*") if p.is_file())


# ------------------------------------------------------------------ export from torch

def input_names(model) -> list[str]:
    sig = inspect.signature(model.forward).parameters
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in sig else [])


class _Traced(torch.nn.Module):
    """Positional tensors in, one tensor out: what torch.onnx and openvino.convert_model trace."""

    def __init__(self, model, task: str, names: list[str]) -> None:
        super().__init__()
        self.model, self.task, self.names = model, task, names

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        kw = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.names:
            kw["token_type_ids"] = token_type_ids
        out = self.model(**kw, return_dict=True)
        return out.last_hidden_state if self.task == "encoder" else out.logits


def example_inputs(tokenizer, names: list[str], batch: int = 2, seq: int = 16) -> dict:
    from workbench.core.measure.timing import fixed_input_ids

    ids = fixed_input_ids(tokenizer, batch, seq)
    mask = torch.ones_like(ids)
    mask[-1, seq // 2:] = 0  # a padded row: the traced graph must take masks, not assume all ones
    full = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return {n: full[n] for n in names}


def _output_name(task: str) -> str:
    return "last_hidden_state" if task == "encoder" else "logits"


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and trace warnings; keep them off the terminal (they are not about the user's
    model: the result is checked against the torch model below)."""
    import io
    import logging
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        prev = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(prev)


@contextlib.contextmanager
def _attention(model, impl: str):
    """Trace with ``impl`` attention (eager: the MatMul/Softmax pattern ONNX Runtime fuses into its Attention
    kernel; transformers' sdpa path traces into a mask graph its optimizer does not match), then restore."""
    prev = getattr(model.config, "_attn_implementation", None)
    if impl == "model" or prev == impl or not hasattr(model, "set_attn_implementation"):
        yield prev
        return
    model.set_attn_implementation(impl)
    try:
        yield impl
    finally:
        model.set_attn_implementation(prev)


def _heads(model) -> tuple[int, int]:
    """(num_heads, hidden_size) for ONNX Runtime's attention fusion; (0, 0) (no attention fusion) when pruning left
    the layers with other head counts than the config's."""
    cfg = model.config
    heads = {m.num_attention_heads for m in model.modules() if hasattr(m, "num_attention_heads")
             and hasattr(m, "attention_head_size")}
    want = getattr(cfg, "num_attention_heads", 0) or 0
    if heads and heads != {want}:
        return 0, 0
    return want, getattr(cfg, "hidden_size", 0) or 0


def export_onnx(model, task: str, tokenizer, path: Path, params: dict, log) -> dict:
    """torch.onnx.export with dynamic batch and sequence axes. Returns what was done (exporter used, opset)."""
    with _attention(model, params.get("attention", "model")) as impl:
        rep = _export_onnx(model, task, tokenizer, path, params, log)
    rep["attention_traced"] = impl
    return rep


def _export_onnx(model, task: str, tokenizer, path: Path, params: dict, log) -> dict:
    names = input_names(model)
    ex = example_inputs(tokenizer, names)
    wrapped = _Traced(model, task, names).eval()
    out_name = _output_name(task)
    path.parent.mkdir(parents=True, exist_ok=True)
    order = [params["exporter"], "dynamo" if params["exporter"] == "torchscript" else "torchscript"]
    errors = []
    for exporter in order:
        t0 = time.perf_counter()
        try:
            with _quiet(), torch.inference_mode(False), torch.no_grad():
                if exporter == "dynamo":
                    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
                    prog = torch.onnx.export(wrapped, tuple(ex.values()), dynamo=True, input_names=names,
                                             output_names=[out_name], opset_version=max(18, params["opset"]),
                                             dynamic_shapes={n: {0: batch, 1: seq} for n in names}, verbose=False)
                    prog.save(str(path))
                else:
                    torch.onnx.export(wrapped, tuple(ex.values()), str(path), dynamo=False, input_names=names,
                                      output_names=[out_name], opset_version=params["opset"],
                                      dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names},
                                                    out_name: {0: "batch", 1: "sequence"} if task == "encoder"
                                                    else {0: "batch"}})
        except Exception as exc:  # noqa: BLE001 - try the other exporter, report both failures if it fails too
            errors.append(f"{exporter}: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
            log(f"torch.onnx {exporter} exporter failed ({errors[-1]}); trying the other one")
            continue
        rep = {"exporter": exporter, "export_seconds": time.perf_counter() - t0,
               "opset": max(18, params["opset"]) if exporter == "dynamo" else params["opset"],
               "inputs": names, "output": out_name}
        if errors:
            rep["exporter_fallback"] = errors
        return rep
    raise InputError(f"torch.onnx could not export this model ({'; '.join(errors)}); expected a model "
                     f"torch.onnx can trace")


def _fuse_onnx(src: Path, model, log) -> dict:
    """ONNX Runtime's transformer optimizer (attention / SkipLayerNorm / BiasGelu fusions) where it knows the
    architecture; the file is replaced in place. Hardware-independent (opt_level 0: no ORT online passes baked in)."""
    from onnxruntime.transformers.optimizer import MODEL_TYPES, optimize_model

    mt = getattr(model.config, "model_type", "")
    kind = mt if mt in MODEL_TYPES else "bert" if mt in ("roberta", "xlm-roberta", "distilbert", "electra",
                                                         "mpnet", "camembert", "deberta") else None
    if kind is None:
        return {"fusion": None, "fusion_note": f"model type {mt!r} is not one ONNX Runtime's optimizer knows"}
    heads, hidden = _heads(model)
    with _quiet():
        opt = optimize_model(str(src), model_type=kind, num_heads=heads, hidden_size=hidden, opt_level=0)
        stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
        opt.save_model_to_file(str(src))
    return {"fusion": kind, "fused_ops": stats}


def _ort_session(path: Path, params: dict, threads: int):
    import onnxruntime as ort

    providers = [p.strip() for p in params["providers"].split("+") if p.strip()]
    avail = ort.get_available_providers()
    missing = [p for p in providers if p not in avail]
    if missing or not providers:
        raise InputError(f"providers={params['providers']}: {', '.join(missing) or 'empty'} not available in "
                         f"this onnxruntime; expected '+'-separated names from: {', '.join(avail)}", param="opt")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = params["inter_threads"]
    so.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if params["execution"] == "parallel"
                         else ort.ExecutionMode.ORT_SEQUENTIAL)
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[params["level"]])
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=providers)
    out = sess.get_outputs()[0].name

    def run(feed):
        return sess.run([out], feed)[0]

    return sess, run


def _onnx_weight_choice(params: dict, feats: dict) -> tuple[str, bool, str]:
    """(weight type, reduce_range, kernel set) for quantize_dynamic on this CPU."""
    wt = params["weight_type"]
    if wt == "auto":
        wt = "qint8" if (feats["vnni"] or feats["avx512"]) else "quint8"
    rr = params["reduce_range"]
    reduce = (wt == "qint8" and not feats["vnni"]) if rr == "auto" else rr == "true"
    kernels = "avx512_vnni" if feats["vnni"] else "avx512" if feats["avx512"] else "avx2"
    return wt, reduce, kernels


def apply_onnx(model, params: dict, ctx, quantize: bool) -> Applied:
    name = "onnx-int8" if quantize else "onnx"
    refuse(model, ctx, name)
    import onnxruntime as ort

    t0 = time.perf_counter()
    threads = _threads(params)
    report: dict = {"runtime": "onnxruntime", "onnxruntime": ort.__version__, "threads": threads,
                    "providers": params["providers"].split("+"), "graph_optimization_level": params["level"]}
    folder = Path(tempfile.mkdtemp(prefix="optbench-runtime-"))
    path = folder / ONNX_FILE
    try:
        ctx.log(f"{name}: exporting to ONNX")
        report.update(export_onnx(model, ctx.task, ctx.tokenizer, path, params, ctx.log))
        report.update(_fuse_onnx(path, model, ctx.log) if params["fusion"] else {"fusion": None})
        report["onnx_fp32_mb"] = path.stat().st_size / 1e6
        dtype = torch.float32
        if quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            feats = cpu_features()
            wt, reduce, kernels = _onnx_weight_choice(params, feats)
            ops = ["MatMul", "Gemm"] if params["ops"] == "matmul" else None
            qpath = folder / "onnx" / "model_int8.onnx"
            ctx.log(f"{name}: quantize_dynamic ({wt} weights, per_channel={params['per_channel']}, "
                    f"reduce_range={reduce}, kernels for {kernels})")
            import onnx

            with _quiet():
                # fused contrib ops (BiasGelu, SkipLayerNorm) have no ONNX shape inference: their outputs are float
                quantize_dynamic(str(path), str(qpath), op_types_to_quantize=ops, per_channel=params["per_channel"],
                                 reduce_range=reduce,
                                 weight_type=QuantType.QInt8 if wt == "qint8" else QuantType.QUInt8,
                                 extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
            os.replace(qpath, path)
            report.update({"quantization": "dynamic int8 (onnxruntime.quantization.quantize_dynamic)",
                           "weight_type": wt, "activation_type": "quint8 (per batch, dynamic)",
                           "per_channel": params["per_channel"], "reduce_range": reduce,
                           "ops_quantized": ops or "all supported", "kernel_set": kernels,
                           "cpu": feats.get("summary")})
            dtype = torch.int8
        wrapper = _build_onnx(folder, model.config, ctx.task, report["inputs"], params, threads, dtype)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    weakref.finalize(wrapper, shutil.rmtree, str(folder), True)
    report["onnx_mb"] = path.stat().st_size / 1e6
    report["files"] = {ONNX_FILE: path.stat().st_size}
    report["apply_seconds"] = time.perf_counter() - t0
    report["runtime_settings"] = wrapper.runtime
    report["export_format"] = FORMAT_ONNX
    ctx.log(f"{name}: ONNX Runtime session ready ({report['onnx_mb']:.1f} MB, {threads} threads, "
            f"{report['exporter']} exporter)")
    return Applied(wrapper, report)


def _build_onnx(folder: Path, config, task: str, names: list[str], params: dict, threads: int,
                dtype: torch.dtype) -> RuntimeModel:
    sess, run = _ort_session(folder / ONNX_FILE, params, threads)
    settings = {"kind": "onnxruntime", "file": ONNX_FILE, "inputs": names, "threads": params["threads"],
                "threads_used": threads, "providers": params["providers"], "level": params["level"],
                "execution": params["execution"], "inter_threads": params["inter_threads"],
                "dtype": str(dtype).replace("torch.", "")}
    w = RuntimeModel(run, config, task, names, settings, _file_bytes(folder, "onnx"), dtype, folder)
    w._session = sess
    return w


# ------------------------------------------------------------------ OpenVINO

def _ov_precision(params: dict, feats: dict, name: str) -> str:
    p = params["precision"]
    if p == "auto":
        return "bf16" if feats["bf16"] else "f32"
    if p == "bf16" and not feats["bf16"]:
        raise InputError(f"{name}: precision=bf16 needs AVX512-BF16 or AMX, which this CPU (or the "
                         f"ONEDNN_MAX_CPU_ISA cap) does not give; expected precision=f32 or auto", param="opt")
    return p


def _ov_config(params: dict, threads: int, precision: str) -> dict:
    cfg = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": params["hint"],
           "INFERENCE_PRECISION_HINT": precision}
    if params["streams"]:
        cfg["NUM_STREAMS"] = params["streams"]
    return cfg


def apply_openvino(model, params: dict, ctx, quantize: bool) -> Applied:
    name = "openvino-int8" if quantize else "openvino"
    refuse(model, ctx, name)
    import openvino as ov

    t0 = time.perf_counter()
    feats = cpu_features()
    precision = _ov_precision(params, feats, name)
    threads = _threads(params)
    names = input_names(model)
    out_name = _output_name(ctx.task)
    report: dict = {"runtime": "openvino", "openvino": ov.__version__, "threads": threads, "hint": params["hint"],
                    "precision": precision, "source": params["source"], "inputs": names, "output": out_name}
    folder = Path(tempfile.mkdtemp(prefix="optbench-runtime-"))
    try:
        ctx.log(f"{name}: converting with openvino.convert_model (from {params['source']})")
        t1 = time.perf_counter()
        if params["source"] == "onnx":
            onnx_path = folder / "tmp" / "model.onnx"
            report.update(export_onnx(model, ctx.task, ctx.tokenizer, onnx_path, params, ctx.log))
            with _quiet():
                ovm = ov.convert_model(str(onnx_path))
            shutil.rmtree(onnx_path.parent, ignore_errors=True)
        else:
            ex = example_inputs(ctx.tokenizer, names)
            with _quiet(), torch.no_grad():
                ovm = ov.convert_model(_Traced(model, ctx.task, names).eval(), example_input=ex)
        report["convert_seconds"] = time.perf_counter() - t1
        got = sorted(n for port in ovm.inputs for n in port.get_names() if n in names)
        if got != sorted(names):
            raise InputError(f"{name}: the converted model's inputs are {got}; expected {names}", param="opt")
        ovm.outputs[0].get_tensor().set_names({out_name})
        dtype = torch.float32
        if quantize:
            report.update(_nncf_quantize(ovm, model, ctx, params, names, name))
            ovm = report.pop("_ov_model")
            dtype = torch.int8
        (folder / "openvino").mkdir(parents=True, exist_ok=True)
        ov.save_model(ovm, str(folder / OV_XML), compress_to_fp16=False)  # f32 weights: the accuracy kept
        del ovm
        wrapper = _build_openvino(folder, model.config, ctx.task, names, params, threads, precision, dtype)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    weakref.finalize(wrapper, shutil.rmtree, str(folder), True)
    sizes = {f: (folder / f).stat().st_size for f in (OV_XML, OV_BIN)}
    report.update({"files": sizes, "openvino_mb": sum(sizes.values()) / 1e6, "apply_seconds": time.perf_counter() - t0,
                   "runtime_settings": wrapper.runtime, "export_format": FORMAT_OPENVINO,
                   "cpu": feats.get("summary"), "execution_precision": wrapper.runtime.get("execution_precision")})
    ctx.log(f"{name}: OpenVINO CPU model compiled ({report['openvino_mb']:.1f} MB, {threads} threads, {precision})")
    return Applied(wrapper, report)


def _nncf_quantize(ovm, model, ctx, params: dict, names: list[str], name: str) -> dict:
    import logging

    import nncf

    from workbench.core.optimizations.calibration import overlap_note, token_batches

    with contextlib.suppress(Exception):
        nncf.set_log_level(logging.ERROR)
    n = params["subset_size"]
    batches = token_batches(ctx.tokenizer, ctx.task, n, 1, params["calib_seq_len"], params["calib_data"])
    items = []
    for b in batches:
        ids = b["input_ids"]
        full = {"input_ids": ids, "attention_mask": b["attention_mask"], "token_type_ids": torch.zeros_like(ids)}
        items.append({k: full[k].numpy().astype("int64") for k in names})
    ctx.log(f"{name}: NNCF static quantization on {len(items)} calibration texts ({params['calib_data']})")
    t0 = time.perf_counter()
    preset = nncf.QuantizationPreset.MIXED if params["preset"] == "mixed" else nncf.QuantizationPreset.PERFORMANCE
    with _quiet():
        q = nncf.quantize(ovm, nncf.Dataset(items), subset_size=len(items), preset=preset,
                          model_type=nncf.ModelType.TRANSFORMER)
    fq = sum(1 for op in q.get_ops() if op.get_type_name() == "FakeQuantize")
    rep = {"_ov_model": q, "quantization": "static int8 (nncf.quantize, model_type TRANSFORMER)",
           "nncf": nncf.__version__, "calibration_samples": len(items), "calibration_seq_len": params["calib_seq_len"],
           "calibration_data": params["calib_data"], "preset": params["preset"], "fake_quantize_nodes": fq,
           "calibration_seconds": time.perf_counter() - t0}
    note = overlap_note(ctx.eval_settings, ctx.task) if params["calib_data"] == "builtin" else None
    if note:
        rep["calibration_note"] = note
    return rep


def _build_openvino(folder: Path, config, task: str, names: list[str], params: dict, threads: int, precision: str,
                    dtype: torch.dtype) -> RuntimeModel:
    import numpy as np
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(str(folder / OV_XML), "CPU", _ov_config(params, threads, precision))
    request = compiled.create_infer_request()
    out_port = compiled.outputs[0]

    def run(feed):
        # the request reuses its output buffer: copy before the next call can overwrite it
        return np.array(request.infer(feed)[out_port], copy=True)

    try:
        used = compiled.get_property("INFERENCE_PRECISION_HINT")
        used = used.to_string() if hasattr(used, "to_string") else str(used)
    except Exception:  # noqa: BLE001 - informational only
        used = None
    settings = {"kind": "openvino", "file": OV_XML, "inputs": names, "threads": params["threads"],
                "threads_used": threads, "hint": params["hint"], "streams": params["streams"],
                "precision": params["precision"], "precision_used": precision, "execution_precision": used,
                "dtype": str(dtype).replace("torch.", "")}
    w = RuntimeModel(run, config, task, names, settings, _file_bytes(folder, "openvino"),
                     torch.bfloat16 if precision == "bf16" and dtype == torch.float32 else dtype, folder)
    w._compiled, w._request = compiled, request
    return w


# ------------------------------------------------------------------ export folder (workbench.core.export)

def save(model, out: Path) -> None:
    """Copy the runtime files into ``out`` (onnx/… or openvino/…), with config.json and the session settings."""
    if not isinstance(model, RuntimeModel):
        raise InputError("runtime export: the model is not an ONNX Runtime / OpenVINO model")
    sub = "onnx" if model.runtime["kind"] == "onnxruntime" else "openvino"
    shutil.copytree(model.folder / sub, Path(out) / sub, dirs_exist_ok=True)
    model.config.save_pretrained(out)
    (Path(out) / RUNTIME_JSON).write_text(json.dumps(model.runtime, indent=1))


def load(path: Path, task: str, manifest: dict):
    """The export folder back as a RuntimeModel, built with the settings it was measured with."""
    import transformers

    path = Path(path)
    settings_path = path / RUNTIME_JSON
    if not settings_path.is_file():
        raise InputError(f"{path}: no {RUNTIME_JSON}; expected a folder written by optbench export")
    s = json.loads(settings_path.read_text())
    config = transformers.AutoConfig.from_pretrained(path)
    threads = s.get("threads") or torch.get_num_threads()
    dtype = getattr(torch, s.get("dtype", "float32"))
    if manifest["format"] == FORMAT_ONNX:
        if not (path / ONNX_FILE).is_file():
            raise InputError(f"{path}: no {ONNX_FILE}; expected the ONNX export")
        params = {"threads": s.get("threads", 0), "providers": s["providers"], "level": s["level"],
                  "execution": s.get("execution", "sequential"), "inter_threads": s.get("inter_threads", 1)}
        return _build_onnx(path, config, task, s["inputs"], params, threads, dtype)
    if not (path / OV_XML).is_file() or not (path / OV_BIN).is_file():
        raise InputError(f"{path}: no {OV_XML} + .bin; expected the OpenVINO export")
    params = {"threads": s.get("threads", 0), "hint": s["hint"], "streams": s.get("streams", 0),
              "precision": s.get("precision", "f32")}
    return _build_openvino(path, config, task, s["inputs"], params, threads, s.get("precision_used", "f32"), dtype)


def is_runtime_opt(name: str) -> bool:
    return name in RUNTIME_OPTS
