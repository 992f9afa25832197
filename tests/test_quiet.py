"""Library noise stays out of the terminal; warnings about the user's model still reach it; -v shows all."""

import logging

from tests.test_cli import cli
from workbench.core import quiet

FRAGMENTS = ("Failed to load", "register_constant()", "`torch_dtype` is deprecated")


def test_known_noise_is_dropped_and_other_warnings_pass(monkeypatch):
    monkeypatch.delenv(quiet.VERBOSE_ENV, raising=False)
    assert quiet.quiet_libraries()
    shown: list[str] = []

    class Keep(logging.Handler):  # on the loggers themselves: transformers' root logger does not propagate
        def emit(self, record):
            shown.append(record.getMessage())

    keep = Keep(level=logging.WARNING)
    loggers = [logging.getLogger(n) for n in ("transformers.modeling_utils", "torchao")]
    for lg in loggers:
        lg.addHandler(keep)
    try:
        loggers[0].warning("`torch_dtype` is deprecated! Use `dtype` instead!")
        loggers[1].warning("Failed to load /x/_C_mxfp8.so: Could not load this library")
        loggers[0].warning("Some weights of LlamaForCausalLM were not initialized from the model checkpoint")
        loggers[1].warning("a layer was skipped")
    finally:
        for lg in loggers:
            lg.removeHandler(keep)
    assert shown == ["Some weights of LlamaForCausalLM were not initialized from the model checkpoint",
                     "a layer was skipped"]
    assert quiet.dropped["transformers.modeling_utils"] >= 1 and quiet.dropped["torchao"] >= 1


def test_verbose_installs_nothing(monkeypatch):
    monkeypatch.setenv(quiet.VERBOSE_ENV, "1")
    assert quiet.quiet_libraries() is False


def test_commands_print_no_library_noise(workdir, tmp_path):
    """`optbench info` imports torch, torchao and transformers in-process: none of their known noise on stderr."""
    r = cli("info", cwd=workdir, env_extra={"OPTBENCH_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr[-2000:]
    assert not any(f in r.stderr for f in FRAGMENTS), r.stderr[:2000]
    assert "cpu features" in r.stdout
