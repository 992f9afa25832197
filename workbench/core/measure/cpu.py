"""What this CPU can do fast: the instruction sets that decide which kernels torch and oneDNN run.

Importable without torch (the UI process warns from it). What matters, as measured on two 2-core EPYC machines of
the same kind (benchmarks/results/cpu_catalogue*.md):
- bfloat16 matmuls are native only with AVX512-BF16 or AMX-BF16; without them torch emulates bf16 and a bf16 cast
  made demo:smollm2 decode 2.9x and demo:minilm 4x *slower* on an AVX2-only EPYC, where on an AVX512-BF16 EPYC it
  was the fastest CPU option (1.9x / 3.3x faster).
- INT8 dot products are one instruction with VNNI (AVX512-VNNI, AVX-VNNI) or AMX-INT8; on plain AVX2 the int8
  kernels need a multiply-add sequence that can saturate (ONNX Runtime and OpenVINO pick their kernels from this).
- Which of them torch may use is capped by ``ATEN_CPU_CAPABILITY`` (torch's vectorised kernels) and
  ``ONEDNN_MAX_CPU_ISA`` (oneDNN's matmuls): ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` makes an AVX-512
  machine take the AVX2 kernel paths, and the "usable" verdicts below follow those caps.
"""

from __future__ import annotations

import os
import platform
import sys

# oneDNN's ISA names, lowest first (https://oneapi-src.github.io/oneDNN/dev_guide_cpu_dispatcher_control.html)
_ONEDNN_ORDER = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
                 "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX512_CORE_AMX",
                 "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16")
# torch's CPU capabilities, lowest first (torch.backends.cpu.get_cpu_capability())
_ATEN_ORDER = ("DEFAULT", "NO AVX", "AVX2", "AVX512")

# Plan (recommend, tune's ordering, warnings) as if on a CPU with exactly these /proc/cpuinfo flags, e.g.
# OPTBENCH_CPU_FLAGS="avx2 avx512f avx512bw avx512vl avx512dq avx512_bf16": the kernels torch runs do not change.
PLAN_ENV = "OPTBENCH_CPU_FLAGS"

FEATURES = ("avx2", "avx512", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
LABELS = {"avx2": "AVX2", "avx512": "AVX-512", "avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI",
          "avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16", "amx_int8": "AMX-INT8"}


def read_cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str | None, set[str]]:
    """(model name, flags) of the first processor listed; (None, empty) where there is no such file."""
    model, flags = None, set()
    try:
        with open(path) as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model, flags


def _rank(order: tuple[str, ...], value: str | None) -> int | None:
    if not value:
        return None
    value = value.strip().upper().replace("-", "_")
    if value in ("ALL", "DEFAULT") and order is _ONEDNN_ORDER:
        return None  # no cap
    return order.index(value) if value in order else None


def torch_capability() -> str | None:
    """torch's CPU kernel capability, only where torch is already imported (never imports it)."""
    torch = sys.modules.get("torch")
    try:
        return torch.backends.cpu.get_cpu_capability() if torch is not None else None
    except Exception:
        return None


def describe(flags: set[str] | None = None, model: str | None = None, capability: str | None = None,
             environ: dict | None = None) -> dict:
    """The instruction sets that matter, torch's kernel capability, and what is usable under the caps.

    ``flags`` / ``model`` default to /proc/cpuinfo; ``capability`` to torch's own answer where torch is imported
    and the flags are this CPU's, else what torch would pick (ATEN_CPU_CAPABILITY, or the best the flags allow);
    ``environ`` to os.environ. Tests pass fake feature lists.
    """
    environ = os.environ if environ is None else environ
    planned = environ.get(PLAN_ENV, "").replace(",", " ").split() if flags is None else []
    if planned:  # plan as if on a CPU with exactly these flags: no kernel caps, no torch answer
        flags, model, environ = set(planned), f"{PLAN_ENV}", {}
    real = flags is None  # torch's own answer describes this CPU, not a faked feature list
    if real:
        model, flags = read_cpuinfo()
    has = {
        "avx2": "avx2" in flags,
        "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags,
        "avx512_vnni": "avx512_vnni" in flags,
        "avx_vnni": "avx_vnni" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags and "amx_tile" in flags,
        "amx_int8": "amx_int8" in flags and "amx_tile" in flags,
    }
    forced = environ.get("ATEN_CPU_CAPABILITY")
    if capability is None and real:
        capability = torch_capability()
    if capability is None:
        best = "AVX512" if has["avx512"] else "AVX2" if has["avx2"] else "DEFAULT"
        capped = _rank(_ATEN_ORDER, forced)
        capability = _ATEN_ORDER[min(capped, _ATEN_ORDER.index(best))] if capped is not None else best
    onednn_cap = environ.get("ONEDNN_MAX_CPU_ISA") or environ.get("DNNL_MAX_CPU_ISA")
    cap = _rank(_ONEDNN_ORDER, onednn_cap)

    def onednn_allows(isa: str) -> bool:
        return cap is None or cap >= _ONEDNN_ORDER.index(isa)

    avx512_kernels = capability.upper() == "AVX512"
    bf16 = (has["avx512_bf16"] and onednn_allows("AVX512_CORE_BF16") and avx512_kernels) or \
        (has["amx_bf16"] and onednn_allows("AVX512_CORE_AMX"))
    vnni = (has["avx512_vnni"] and onednn_allows("AVX512_CORE_VNNI")) or \
        (has["avx_vnni"] and onednn_allows("AVX2_VNNI")) or (has["amx_int8"] and onednn_allows("AVX512_CORE_AMX"))
    out = {
        "model": model or platform.processor() or platform.machine(),
        "arch": platform.machine(),
        **has,
        "torch_capability": capability,
        "onednn_max_isa": onednn_cap,
        "aten_cpu_capability": forced,
        "bf16_native": bool(bf16),
        "int8_vnni": bool(vnni),
    }
    out["summary"] = summary(out)
    return out


def summary(isa: dict) -> str:
    """One line: 'AVX2 AVX-512 AVX512-VNNI AVX512-BF16; torch kernels AVX512; bf16 native, int8 VNNI'."""
    feats = " ".join(LABELS[f] for f in FEATURES if isa.get(f)) or "no AVX2"
    caps = f"; torch kernels {isa.get('torch_capability')}"
    if isa.get("onednn_max_isa"):
        caps += f", oneDNN capped at {isa['onednn_max_isa']}"
    verdict = ("bf16 native" if isa.get("bf16_native") else "bf16 emulated (slow)") + ", " + \
        ("int8 VNNI" if isa.get("int8_vnni") else "int8 without VNNI")
    return f"{feats}{caps}; {verdict}"


def precision_warning(opt_names: list[str], device: str, isa: dict | None = None) -> str | None:
    """A one-line warning when a recipe casts to bfloat16 on a CPU whose kernels have no native bf16 matmul."""
    if not device or device.startswith("cuda") or "bf16" not in opt_names:
        return None
    isa = isa if isa is not None else describe()
    if isa["bf16_native"]:
        return None
    return (f"bf16 on this CPU ({isa['model']}; torch kernels {isa['torch_capability']}): no usable AVX512-BF16 or "
            f"AMX, so bfloat16 matmuls run emulated — on an AVX2-only EPYC a bf16 cast made demo:smollm2 decode 2.9x "
            f"and demo:minilm 4x slower; int8-weight-only (LMs) or int8-selective (encoders) are the faster CPU paths")


def align_inductor_with_caps(environ: dict | None = None) -> int | None:
    """Make torch.compile's C++ code use the vector width ATEN_CPU_CAPABILITY allows. Inductor picks its ISA from
    cpuid and ignores that cap; AVX2 ATen kernels next to AVX-512 generated code made a compiled static-cache decode
    step index out of bounds (torch 2.13, seen here with the AVX2 paths forced). Returns the simdlen set, or None."""
    environ = os.environ if environ is None else environ
    if (environ.get("ATEN_CPU_CAPABILITY") or "").strip().lower() != "avx2":
        return None
    import torch._inductor.config as inductor_config

    inductor_config.cpp.simdlen = 256
    return 256
