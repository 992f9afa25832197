"""Where a CUDA quantization kernel was measured to pay, by batch and model size (core/optimizations/_batch_notes)."""

from workbench.core.optimizations import _batch_notes


def test_the_nearest_measured_shape_decides():
    small = _batch_notes.note("int8-weight-only", "gemlite", 1.0e9)
    large = _batch_notes.note("int8-weight-only", "gemlite", 7.0e9)
    assert small["pays_at_batch"] == 1 and "Llama-1B" in small["batch_note"]
    assert large["pays_at_batch"] == 8 and "Llama-8B" in large["batch_note"]
    # between the two shapes the ratio decides: 3.5e9 is 2.8x the 1B shape and 2.3x below the 8B one
    assert _batch_notes.note("int8-weight-only", "gemlite", 3.5e9)["pays_at_batch"] == 8
    assert _batch_notes.note("int8-weight-only", "gemlite", 2.5e9)["pays_at_batch"] == 1
    # the torchao int8 kernel's batch-8 collapse is said at every size measured
    assert "0.15x" in _batch_notes.note("int8-weight-only", "torchao", 1.0e8)["batch_note"]
    assert "0.05x" in _batch_notes.note("int8-weight-only", "torchao", 70e9)["batch_note"]


def test_no_note_off_cuda_or_where_nothing_was_measured():
    assert _batch_notes.note("int8-weight-only", "torchao", 1e9, device="cpu") == {}
    assert _batch_notes.note("int8-dynamic-act", None, 1e9) == {}
    assert _batch_notes.note("int4-weight-only", "tinygemm", 1e9, device="cuda:1")["pays_at_batch"] == 1


def test_every_row_names_the_gpu_and_a_batch_it_can_be_checked_at():
    for (opt, _), rows in _batch_notes.MEASURED.items():
        sizes = [r[0] for r in rows]
        assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes), opt
        for _, batch, text in rows:
            assert batch in (0, 1, 8) and "H200" in text, (opt, text)
