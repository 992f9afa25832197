"""The CPU runtimes users pick instead of torch: ONNX Runtime and OpenVINO, float and INT8, as ``runtime``-stage
optimizations measured by optbench's own bench and eval harness in the same run as the torch baseline.

Each one exports the (possibly pruned or distilled) float32 torch model once, builds the runtime's session from the
files it wrote, and replaces the model with a wrapper (``_cpu_runtimes.RuntimeModel``) that the harness calls like
the transformers model: ``model(**inputs).last_hidden_state`` (encoders) or ``.logits`` (classifiers) as torch
tensors. Model size is the runtime files' size. Encoders and sequence classifiers only: a causal LM needs a KV-cache
export (optimum-onnx / OpenVINO GenAI), which is not built, and is refused before any work.

Packages: onnxruntime, onnx, onnxscript (torch.onnx's dynamo exporter), openvino, nncf (all pinned in
requirements.txt); imported inside the apply functions only. optimum-onnx 0.1.0 needs transformers < 4.58 and
optimum-intel 2.2.0 pulls transformers 5.5 and another torch, so neither installs beside transformers 5.24: the
export here is torch.onnx / openvino.convert_model, and the folders are laid out the way sentence-transformers and
optimum load them (``onnx/model.onnx``; ``openvino/openvino_model.xml`` + ``.bin``).

This module is torch-free (the registry imports it); the work is in ``_cpu_runtimes``.
"""

from __future__ import annotations

from workbench.core.optimizations.base import Applied, Param, WeightStorage, register

FORMAT_ONNX = "optbench-onnx"
FORMAT_OPENVINO = "optbench-openvino"
RUNTIME_FORMATS = (FORMAT_ONNX, FORMAT_OPENVINO)
RUNTIME_OPTS = ("onnx", "onnx-int8", "openvino", "openvino-int8")

# What a runtime cannot take: weights already in a torch-only format, reduced-precision casts (the runtimes choose
# their own precision), and steps that change the forward at run time (a compiled forward, early exits, generation).
_CONFLICTS = ("int8-dynamic", "int8-dynamic-act", "int8-weight-only", "int4-weight-only", "fp8-weight-only",
              "fp8-dynamic", "int8-selective", "qat", "sparse-2of4", "fp16", "bf16", "early-exit", "compile",
              "graph-decode", "kv-cache")
_COMMON = dict(
    family="runtime", stage="runtime", tasks=("encoder", "seq-cls"), devices=("cpu",), exportable="custom",
    exclusive_group="cpu-runtime",
    conflicts=dict.fromkeys(_CONFLICTS, "an ONNX Runtime / OpenVINO step exports the float32 torch model as it is: "
                            "torch-only quantized weights, half-precision casts and run-time changes to the forward "
                            "(compile, early exit, generation settings) cannot be exported into it; use the runtime's "
                            "own int8 or precision options instead"),
    cost=0.3,  # an export first
)
# int8 weights with one scale per channel; activations rounded to an int8 grid at run time
_INT8 = dict(quantizes_activations=True, weights=WeightStorage("int8-dynamic:per-channel", 1.0, bytes_per_row=16))

THREADS = Param("threads", int, 0, "intra-op threads; 0 = torch's thread count (what the baseline uses)", min=0,
                max=1024)
OPSET = Param("opset", int, 18, "ONNX opset of the export", min=14, max=23)
EXPORTER = Param("exporter", str, "torchscript", "torch.onnx exporter: torchscript (dynamo=False; the graph ONNX "
                 "Runtime's attention/LayerNorm fusions match: measured fastest here) or dynamo (torch.export + "
                 "onnxscript, the maintained path); either falls back to the other when it fails (reported)",
                 choices=("torchscript", "dynamo"))
ATTENTION = Param("attention", str, "eager", "attention traced into the ONNX graph: eager (the MatMul/Softmax "
                  "pattern ONNX Runtime's optimizer fuses into its Attention kernel: fastest) or model (the model's "
                  "own implementation, e.g. sdpa)", choices=("eager", "model"))
FUSION = Param("fusion", bool, True, "run ONNX Runtime's transformer optimizer on the export (Attention, "
               "EmbedLayerNormalization, SkipLayerNormalization, BiasGelu fusions; BERT-like models) before the "
               "session's own graph optimizations")
LEVEL = Param("level", str, "all", "ONNX Runtime graph optimization level: disable | basic (constant folding, "
              "redundant nodes) | extended (+ attention, LayerNorm, GELU fusions) | layout (+ NCHWc layouts) | all",
              choices=("disable", "basic", "extended", "layout", "all"), search=("all", "extended"))
PROVIDERS = Param("providers", str, "CPUExecutionProvider", "ONNX Runtime execution providers, '+'-separated, "
                  "in priority order (each must be available in the installed onnxruntime)")
ORT_MODE = Param("execution", str, "sequential", "ONNX Runtime execution mode: sequential, or parallel (independent "
                 "graph branches on inter_threads)", choices=("sequential", "parallel"))
INTER = Param("inter_threads", int, 1, "ONNX Runtime inter-op threads (parallel execution mode only)", min=0,
              max=1024)
HINT = Param("hint", str, "LATENCY", "OpenVINO performance hint: LATENCY (one stream, all threads on one request) "
             "or THROUGHPUT (several streams; a single synchronous request then gets one stream's threads)",
             choices=("LATENCY", "THROUGHPUT"))
STREAMS = Param("streams", int, 0, "OpenVINO NUM_STREAMS; 0 = chosen by the hint", min=0, max=256)
PRECISION = Param("precision", str, "f32", "OpenVINO inference precision: f32 (accuracy kept), bf16 (needs "
                  "AVX512-BF16 or AMX; refused elsewhere), or auto (bf16 where the CPU has it, else f32)",
                  choices=("f32", "bf16", "auto"), search=("f32", "auto"))
SOURCE = Param("source", str, "torch", "what OpenVINO converts: torch (openvino.convert_model on the module, traced) "
               "or onnx (the torch.onnx export, then convert_model on the file)", choices=("torch", "onnx"))
CALIB_SAMPLES = Param("subset_size", int, 128, "calibration texts NNCF collects statistics on (one text of up to "
                      "calib_seq_len tokens each)", min=1, max=100000, search=(128,))
CALIB_SEQ = Param("calib_seq_len", int, 128, "tokens per calibration text (padded/truncated)", min=8, max=8192)
CALIB_DATA = Param("calib_data", str, "builtin", "calibration text: builtin (end of the built-in text, away from the "
                   "evaluation text) or a .txt path (blank-line separated texts)")


@register(
    name="onnx",
    tp_reason="it exports the model to one ONNX Runtime graph that runs in one process",
    summary="Export to ONNX (torch.onnx) and run with ONNX Runtime (graph optimization level, threads, providers).",
    params=(LEVEL, FUSION, ATTENTION, THREADS, PROVIDERS, ORT_MODE, INTER, EXPORTER, OPSET),
    requires=("onnxruntime", "onnx"),
    notes="Export folder: onnx/model.onnx + config.json + tokenizer (sentence-transformers backend='onnx', optimum's "
          "ORTModel). ONNX Runtime's MLAS picks AVX2 / AVX-512 kernels from cpuid itself.",
    **_COMMON,
)
def apply_onnx(model, params: dict, ctx) -> Applied:
    from workbench.core.optimizations import _cpu_runtimes

    return _cpu_runtimes.apply_onnx(model, params, ctx, quantize=False)


@register(
    name="onnx-int8",
    tp_reason="it exports the model to one ONNX Runtime graph that runs in one process",
    summary="ONNX Runtime dynamic INT8 (onnxruntime.quantization.quantize_dynamic): int8 weights, per-batch uint8 "
            "activations; the weight type chosen for the CPU (VNNI: s8 weights; AVX2-only: u8).",
    params=(
        Param("weight_type", str, "auto", "auto: qint8 (u8s8) where the CPU has VNNI (AVX512-VNNI, AVX-VNNI, AMX) "
              "or AVX-512, quint8 (u8u8) on AVX2-only CPUs, whose u8s8 kernel multiply-adds pairs into int16 and "
              "can saturate; qint8 | quint8 to force one", choices=("auto", "qint8", "quint8")),
        Param("per_channel", bool, True, "one weight scale per output channel (more accurate than per tensor)",
              search=(True, False)),
        Param("reduce_range", str, "auto", "7-bit weights: auto = on for qint8 without VNNI (the saturation "
              "workaround ONNX Runtime documents), off elsewhere", choices=("auto", "true", "false")),
        Param("ops", str, "matmul", "what is quantized: matmul (MatMul/Gemm: the Linear layers) or all (also "
              "Gather embeddings and attention ops quantize_dynamic supports)", choices=("matmul", "all")),
        LEVEL, FUSION, ATTENTION, THREADS, PROVIDERS, ORT_MODE, INTER, EXPORTER, OPSET,
    ),
    requires=("onnxruntime", "onnx"),
    notes="Export folder: onnx/model.onnx (the quantized graph) + config.json + tokenizer. Accuracy delta is "
          "reported like any other quantization; the export bound is the dynamic-activation one.",
    **_COMMON, **_INT8,
)
def apply_onnx_int8(model, params: dict, ctx) -> Applied:
    from workbench.core.optimizations import _cpu_runtimes

    return _cpu_runtimes.apply_onnx(model, params, ctx, quantize=True)


@register(
    name="openvino",
    tp_reason="it exports the model to one OpenVINO graph that runs in one process",
    summary="Convert with openvino.convert_model and run on OpenVINO's CPU plugin (threads, LATENCY/THROUGHPUT hint, "
            "f32 or bf16 inference precision).",
    params=(PRECISION, THREADS, HINT, STREAMS, SOURCE, EXPORTER, OPSET),
    requires=("openvino",),
    notes="Export folder: openvino/openvino_model.xml + .bin (f32 weights) + config.json + tokenizer "
          "(sentence-transformers backend='openvino', optimum-intel's OVModel). bf16 inference precision needs "
          "AVX512-BF16 or AMX.",
    **_COMMON,
)
def apply_openvino(model, params: dict, ctx) -> Applied:
    from workbench.core.optimizations import _cpu_runtimes

    return _cpu_runtimes.apply_openvino(model, params, ctx, quantize=False)


@register(
    name="openvino-int8",
    tp_reason="it exports the model to one OpenVINO graph that runs in one process",
    summary="OpenVINO with NNCF post-training static INT8 (nncf.quantize, model_type TRANSFORMER) calibrated on the "
            "built-in text or your file.",
    params=(CALIB_SAMPLES, CALIB_SEQ, CALIB_DATA,
            Param("preset", str, "mixed", "NNCF preset: mixed (symmetric weights, asymmetric activations: more "
                  "accurate) or performance (symmetric both)", choices=("mixed", "performance")),
            PRECISION, THREADS, HINT, STREAMS, SOURCE, EXPORTER, OPSET),
    requires=("openvino", "nncf"),
    notes="Export folder: openvino/openvino_model.xml + .bin (int8 weights, fake-quantize nodes) + config.json + "
          "tokenizer. Int8 matmuls are one VNNI instruction with AVX512-VNNI / AVX-VNNI / AMX-INT8.",
    **{**_COMMON, "cost": 1.5},  # export + NNCF calibration
    **_INT8,
)
def apply_openvino_int8(model, params: dict, ctx) -> Applied:
    from workbench.core.optimizations import _cpu_runtimes

    return _cpu_runtimes.apply_openvino(model, params, ctx, quantize=True)
