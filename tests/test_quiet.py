"""Library noise stays out of the terminal; warnings about the user's model still reach it; -v shows all."""

import logging

from tests.test_cli import cli
from workbench.core import quiet

FRAGMENTS = ("Failed to load", "register_constant()", "`torch_dtype` is deprecated")


def test_known_noise_is_dropped_and_other_warnings_pass(monkeypatch, caplog):
    monkeypatch.delenv(quiet.VERBOSE_ENV, raising=False)
    assert quiet.quiet_libraries()
    caplog.set_level(logging.WARNING)
    logging.getLogger("transformers.modeling_utils").warning("`torch_dtype` is deprecated! Use `dtype` instead!")
    logging.getLogger("torchao").warning("Failed to load /x/_C_mxfp8.so: Could not load this library")
    logging.getLogger("transformers.modeling_utils").warning("Some weights of LlamaForCausalLM were not "
                                                              "initialized from the model checkpoint")
    logging.getLogger("torchao").warning("a layer was skipped")
    shown = [r.getMessage() for r in caplog.records]
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
