"""CPU instruction-set detection from faked feature lists: what is present, what the kernel caps let torch use,
and the warnings that follow (no real CPU needed: these pass on AVX2-only and AVX-512 machines alike)."""

import json

from tests.test_cli import cli
from workbench.core.measure.cpu import describe, precision_warning, read_cpuinfo

AVX2_EPYC = {"fpu", "sse4_2", "avx", "avx2", "fma", "f16c"}
ZEN4 = AVX2_EPYC | {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16"}
SAPPHIRE = ZEN4 | {"amx_tile", "amx_bf16", "amx_int8", "avx_vnni"}


def test_features_and_verdicts_from_flags():
    plain = describe(AVX2_EPYC, "AMD EPYC (AVX2)", environ={})
    assert plain["avx2"] and not plain["avx512"] and plain["torch_capability"] == "AVX2"
    assert not plain["bf16_native"] and not plain["int8_vnni"]
    assert "bf16 emulated" in plain["summary"] and "AVX-512" not in plain["summary"]
    zen4 = describe(ZEN4, "AMD EPYC (Zen 4)", environ={})
    assert zen4["torch_capability"] == "AVX512" and zen4["bf16_native"] and zen4["int8_vnni"]
    assert "AVX512-BF16" in zen4["summary"] and "AVX512-VNNI" in zen4["summary"]
    spr = describe(SAPPHIRE, "Xeon", environ={})
    assert spr["amx_bf16"] and spr["amx_int8"] and spr["avx_vnni"] and spr["bf16_native"]


def test_kernel_caps_take_away_what_the_hardware_has():
    forced = describe(ZEN4, "AMD EPYC", environ={"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert forced["avx512_bf16"]  # still present in hardware
    assert forced["torch_capability"] == "AVX2" and not forced["bf16_native"] and not forced["int8_vnni"]
    assert "oneDNN capped at AVX2" in forced["summary"]
    vnni_only = describe(ZEN4, "AMD EPYC", environ={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"})
    assert vnni_only["int8_vnni"] and not vnni_only["bf16_native"]
    assert describe(ZEN4, "x", capability="AVX2", environ={})["bf16_native"] is False  # torch's own answer wins
    assert describe(SAPPHIRE, "x", environ={"ONEDNN_MAX_CPU_ISA": "ALL"})["bf16_native"]


def test_bf16_warning_only_where_bf16_is_emulated():
    plain, zen4 = describe(AVX2_EPYC, "AMD EPYC", environ={}), describe(ZEN4, "AMD EPYC", environ={})
    warning = precision_warning(["bf16", "int8-weight-only"], "cpu", plain)
    assert warning and warning.startswith("bf16 on this CPU (AMD EPYC") and "emulated" in warning
    assert precision_warning(["bf16"], "cpu", zen4) is None
    assert precision_warning(["bf16"], "cuda", plain) is None
    assert precision_warning(["int8-weight-only"], "cpu", plain) is None


def test_cpuinfo_parsing(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu avx avx2 fma\n\n"
                 "processor\t: 1\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu avx avx2 fma\n")
    assert read_cpuinfo(str(f)) == ("AMD EPYC 7B13", {"fpu", "avx", "avx2", "fma"})
    assert read_cpuinfo(str(tmp_path / "missing")) == (None, set())


def test_info_and_reports_name_the_instruction_sets(workdir):
    r = cli("info", "--json", cwd=workdir, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    env = json.loads(r.stdout)
    isa = env["cpu_isa"]
    assert {"avx2", "avx512", "avx512_vnni", "avx512_bf16", "amx_bf16", "torch_capability", "bf16_native"} <= set(isa)
    assert isa["torch_capability"] in ("DEFAULT", "NO AVX", "AVX2", "AVX512", "VSX", "Z VECTOR")
    assert env["cpu"] == isa["model"]


def test_run_warns_before_a_bf16_cast_on_avx2_kernels(workdir, tiny_llama):
    """With the AVX2 kernel paths forced (what an AVX2-only CPU runs), a bf16 cast is said to be emulated before the
    run, once, and the run still completes with the warning in its report."""
    from tests.conftest import FAST

    r = cli("run", "--model", str(tiny_llama), "--device", "cpu", "--opt", "bf16", "--json", *FAST, cwd=workdir,
            env_extra={"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.count("bf16 on this CPU") == 1 and "emulated" in r.stderr
    doc = json.loads(r.stdout)
    assert "emulated" in doc["optimization_reports"][0]["warning"]
    assert doc["environment"]["cpu_isa"]["torch_capability"] == "AVX2"
    assert doc["environment"]["cpu_isa"]["bf16_native"] is False


def test_planning_for_another_cpu(monkeypatch):
    """OPTBENCH_CPU_FLAGS plans as if on a CPU with exactly those flags (no kernel caps applied)."""
    monkeypatch.setenv("OPTBENCH_CPU_FLAGS", "avx2 fma")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    plain = describe()
    assert plain["avx2"] and not plain["avx512"] and not plain["bf16_native"] and plain["model"] == "OPTBENCH_CPU_FLAGS"
    monkeypatch.setenv("OPTBENCH_CPU_FLAGS", ",".join(sorted(ZEN4)))
    assert describe()["bf16_native"] and describe()["torch_capability"] == "AVX512"
