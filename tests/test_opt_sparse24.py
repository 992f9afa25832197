"""2:4 semi-structured sparsity: the mask is exact on CPU; the sparse kernels need a CUDA GPU."""

import pytest

import torch  # a pinned dependency: a broken install must fail, not skip

from tests.conftest import fast_recipe  # noqa: E402
from workbench.core.errors import InputError  # noqa: E402
from workbench.core.optimizations.sparse24 import is_two_four, two_four_mask  # noqa: E402


def test_mask_keeps_the_two_largest_of_every_four():
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    m = two_four_mask(w)
    assert m.reshape(8, 4, 4).sum(-1).eq(2).all()
    kept_min = (w.abs() * m).reshape(8, 4, 4).masked_fill(~m.reshape(8, 4, 4), float("inf")).amin(-1)
    dropped_max = (w.abs() * ~m).reshape(8, 4, 4).amax(-1)
    assert (kept_min >= dropped_max).all()
    assert is_two_four(w * m) and not is_two_four(w)


def test_rejected_on_cpu():
    with pytest.raises(InputError, match="does not run on cpu"):
        fast_recipe("demo:minilm", [("sparse-2of4", {})]).validate(device="cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU with sparse tensor cores (sm80+); run "
                                                          "on the GPU machine with pytest -m gpu")
def test_semi_structured_on_cuda(tmp_path):
    from tests.fixtures.tiny import build_llama
    from workbench.core import optimizations
    from workbench.core.models import load
    from workbench.core.optimizations.context import ApplyContext

    path = build_llama(tmp_path / "llama", hidden=256, inter=512)
    loaded = load(str(path), None, "cuda")
    spec = optimizations.get("sparse-2of4")
    rep = spec.apply(loaded.model, spec.resolve({}), ApplyContext("cuda", "causal-lm", loaded.tokenizer)).report
    assert rep["layers_sparse"] > 0 and abs(rep["measured_sparsity"] - 0.5) < 1e-6
    w = loaded.model.model.layers[0].mlp.up_proj.weight
    assert "SparseSemiStructured" in type(w).__name__
    assert 0 < rep["compressed_bytes"]  # cuSPARSELt: ~56 % of dense; CUTLASS also keeps a transposed copy
    with torch.inference_mode():
        ids = torch.arange(3, 67, device="cuda")[None].repeat(16, 1)
        assert torch.isfinite(loaded.model(input_ids=ids).logits).all()
