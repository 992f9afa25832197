"""Where each CUDA weight-quantization kernel was measured to beat bf16 decode, by batch and model size.

The figures are graph-decode ladder rows on one NVIDIA H200 (benchmarks/results/quant_table_h200.md: decode
ms/token against the bf16 rung of the same run, or of the nearest run on record where that run had none). A report
carries the row of the measured shape nearest the model's parameter count (by ratio) as ``pays_at_batch`` (the
largest measured batch at which the kernel beat bf16; 0: none) and ``batch_note`` (what was measured); the Results
pane warns when a run's batch is above ``pays_at_batch``. Measured on CUDA only: CPU runs carry no note.
"""

from __future__ import annotations

import math

SMOLLM2, LLAMA_1B, LLAMA_8B = 1.35e8, 1.24e9, 8.03e9

# (optimization, kernel) -> ((parameters of the measured shape, pays_at_batch, what was measured), ...)
MEASURED = {
    ("int8-weight-only", "torchao"): (
        (SMOLLM2, 1, "torchao's int8 weight-only kernel matched bf16 at batch 1 and fell to 0.15x at batch 8 on "
                     "SmolLM2-135M (H200, graph-decode)"),
        (LLAMA_1B, 1, "torchao's int8 weight-only kernel beat bf16 at batch 1 only on the Llama-1B shape (H200, "
                      "graph-decode: 1.08x at batch 1, 0.05x at batch 8); kernel=gemlite was 0.81x there")),
    ("int8-weight-only", "gemlite"): (
        (LLAMA_1B, 1, "GemLite int8 beat bf16 at batch 1 only on the Llama-1B shape (H200, graph-decode: 1.29x at "
                      "batch 1, 0.81x at batch 8)"),
        (LLAMA_8B, 8, "GemLite int8 beat bf16 at batch 1 and 8 on the Llama-8B shape (H200, graph-decode: 1.38x "
                      "and 1.28x)")),
    ("int4-weight-only", "tinygemm"): (
        (LLAMA_1B, 1, "tinygemm int4 beat bf16 at batch 1 only on the Llama-1B shape (H200, graph-decode: 1.18x at "
                      "batch 1, 0.86x at batch 8)"),
        (LLAMA_8B, 8, "tinygemm int4 beat bf16 at batch 1 and 8 on the Llama-8B shape (H200, graph-decode: 1.51x "
                      "and 1.03x)")),
    ("int4-weight-only", "gemlite"): (
        (LLAMA_1B, 0, "GemLite int4 was slower than the default tinygemm kernel at batch 1 (1.42 vs 1.05 ms/token) "
                      "and than bf16 at batch 8 (0.72x) on the Llama-1B shape (H200, graph-decode)"),
        (LLAMA_8B, 8, "GemLite int4 beat bf16 at batch 1 and 8 on the Llama-8B shape (H200, graph-decode: 1.44x and "
                      "1.05x); tinygemm was 1.51x at batch 1")),
    ("fp8-weight-only", None): (
        (SMOLLM2, 1, "float8 weight-only matched bf16 at batch 1 on SmolLM2-135M (1.02x; H200, graph-decode)"),
        # batch 1 was not measured at 1B: the note says so, and warns only above it
        (LLAMA_1B, 1, "float8 weight-only was 0.56x bf16 at batch 8 on the Llama-1B shape (H200, graph-decode; "
                      "batch 1 not measured at this size, 1.02x on SmolLM2-135M)")),
    ("fp8-dynamic", None): (
        (LLAMA_8B, 0, "fp8 dynamic W8A8 was 0.92x bf16 at batch-1 decode on the Llama-8B shape (H200, "
                      "graph-decode): it pays where matmuls are compute-bound (prefill, large batches)"),),
}


def note(opt: str, kernel: str | None, n_params: float, device: str = "cuda") -> dict:
    """The report keys for ``opt`` with ``kernel`` on a model of ``n_params`` parameters; {} off CUDA or where
    nothing was measured."""
    rows = MEASURED.get((opt, kernel))
    if not rows or not str(device).startswith("cuda"):
        return {}
    _, batch, text = min(rows, key=lambda row: abs(math.log(row[0] / max(n_params, 1.0))))
    return {"pays_at_batch": batch, "batch_note": text}


def n_params(model) -> int:
    """Parameters before quantization (what the rows are keyed on)."""
    return sum(p.numel() for p in model.parameters())
