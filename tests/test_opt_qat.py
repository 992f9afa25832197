"""QAT (torchao): fake-quantized fine-tuning, conversion to real int weights, comparison with PTQ, export."""

import pytest

import torch  # a pinned dependency: a broken install must fail, not skip
import torchao  # noqa: F401  (pinned dependency)

from workbench.core import optimizations  # noqa: E402
from workbench.core.export import load_artifact, save  # noqa: E402
from workbench.core.models import load  # noqa: E402
from workbench.core.optimizations.context import ApplyContext  # noqa: E402


def test_qat_trains_converts_and_reports_against_ptq(tiny_llama, tmp_path):
    import copy

    loaded = load(str(tiny_llama), None, "cpu")
    before = copy.deepcopy(loaded.model.model.layers[0].mlp.up_proj.weight.detach())
    events = []
    ctx = ApplyContext("cpu", loaded.task, loaded.tokenizer,
                       progress=lambda f, **kw: events.append(kw))
    spec = optimizations.get("qat")
    rep = spec.apply(loaded.model, spec.resolve({"steps": 4, "batch": 2, "seq_len": 32, "lr": 1e-3}), ctx).report
    w = loaded.model.model.layers[0].mlp.up_proj.weight
    assert type(w).__name__ == "IntxUnpackedToInt8Tensor"
    assert rep["layers_quantized"] == 14 and rep["steps"] == 4
    assert rep["ptq_heldout_error"] > 0 and rep["qat_heldout_error"] > 0
    assert rep["qat_vs_ptq"] in ("better", "worse", "equal")
    assert all(torch.isfinite(torch.tensor(rep["loss_curve"])))
    assert any("loss" in e for e in events)
    # training moved the weights: dequantized QAT weights differ from a plain quantization of the original
    deq = w.dequantize()
    assert (deq - before).abs().max() > 0
    rec = save(loaded.model, loaded.tokenizer, "causal-lm", tmp_path / "art", {}, [{"name": "qat", **rep}], "cpu")
    assert rec["verified"] and rec["format"] == "transformers"
    model, _, _ = load_artifact(tmp_path / "art")
    assert type(model.model.layers[0].mlp.up_proj.weight).__name__ == "IntxUnpackedToInt8Tensor"
