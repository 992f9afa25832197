"""Loading a GGUF file reports how far its tensors are dequantized (the slow part); the report ends at 1."""

from __future__ import annotations

from workbench.core.models import load


def test_gguf_load_reports_progress_to_the_end_and_unhooks():
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    before = gguf_utils.tqdm
    seen: list[float] = []
    loaded = load("demo:smollm2", device="cpu", on_progress=seen.append)
    assert loaded.ref.gguf_file  # the demo is a GGUF file inside its PyPI package
    assert len(seen) >= 10, seen  # in steps of at least 1 %, over hundreds of tensors
    assert seen == sorted(seen) and seen[-1] == 1.0 and 0 < seen[0] <= 0.05
    assert gguf_utils.tqdm is before  # transformers' own loop is back as it was
