"""graph-decode's Triton decode-attention kernel (core/optimizations/_decode_kernel.py): its numbers against sdpa
in Triton's interpreter on CPU (where triton is installed: it comes with torch's CUDA builds, not the CPU ones), and
the catalogue's rules for it. Its CUDA path: tests/test_opt_gpu.py."""

import importlib.util
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, fast_recipe
from workbench.core import pipeline

CHECK = r"""
import types, torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from workbench.core.optimizations._decode_kernel import decode_attention_op
torch.manual_seed(0)
op = decode_attention_op()
for b, heads, kv, length, d, valid in [(1, 9, 3, 40, 64, 17), (2, 32, 8, 70, 64, 70), (1, 4, 4, 33, 32, 1),
                                       (1, 32, 8, 5000, 64, 4321)]:
    q, k, v = torch.randn(b, heads, 1, d), torch.randn(b, kv, length, d), torch.randn(b, kv, length, d)
    allowed = torch.zeros(b, 1, 1, length, dtype=torch.bool)
    allowed[..., :valid] = True
    allowed[-1, ..., :2] = b == 1  # the last row's first keys hidden (padding) when there are two rows
    module = types.SimpleNamespace(num_key_value_groups=heads // kv, is_causal=True, training=False)
    want, _ = sdpa_attention_forward(module, q, k, v, allowed, scaling=d ** -0.5)
    got = op(q[:, :, 0], k, v, allowed[:, 0, -1, :].expand(b, -1), d ** -0.5).unsqueeze(1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
print("ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed (CPU torch builds)")
def test_kernel_matches_sdpa_in_the_interpreter():
    """Grouped heads 9 over 3 (SmolLM2), 32 over 8 (Llama-1B) with two rows and padding, 4 over 4 with one visible
    key, and a 5,000-row cache (spans of several blocks, the last ones hidden): the kernel's output equals sdpa's
    (fp32, Triton's interpreter)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    done = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_decode_kernel_needs_fuse_and_runs_the_eager_loop_unchanged_on_cpu(tiny_llama):
    from workbench.core.errors import InputError

    r = fast_recipe(str(tiny_llama), [("graph-decode", {"decode_kernel": "triton"})])
    with pytest.raises(InputError, match="decode_kernel=triton.*fuse=true"):
        pipeline.run(r.validate(), lambda *a, **k: None)
    events = []
    r = fast_recipe(str(tiny_llama), [("graph-decode", {"decode_kernel": "triton", "fuse": True})])
    report = pipeline.run(r.validate(), lambda type_, **k: events.append((type_, k)))
    assert report["optimization_reports"][0]["decode_kernel"] == "triton"
    assert any(t == "log" and "is a CUDA kernel" in k["text"] for t, k in events)
    assert report["optimized"]["decode_ms_per_token"]["count"] >= 2
