import pytest

from workbench.core import optimizations
from workbench.core.errors import InputError
from workbench.core.recipe import BenchSettings, ModelSpec, OptStep, Recipe


def recipe(*steps, **kw):
    return Recipe(ModelSpec("demo:minilm"), [OptStep(n, p) for n, p in steps], **kw)


def test_parse_opt_arg():
    assert optimizations.parse_opt_arg("prune-l1:sparsity=0.3,scope=global") == (
        "prune-l1", {"sparsity": "0.3", "scope": "global"})
    assert optimizations.parse_opt_arg("fp16") == ("fp16", {})
    with pytest.raises(InputError, match="not key=value"):
        optimizations.parse_opt_arg("prune-l1:sparsity")


def test_params_are_coerced_and_defaults_filled():
    r = recipe(("prune-l1", {"sparsity": "0.25"})).validate()
    assert r.optimizations[0].params == {"sparsity": 0.25, "scope": "layer", "skip_head": True}


@pytest.mark.parametrize("params, message", [
    ({"sparsity": "1.5"}, r"sparsity='1.5' is out of range; expected a number in \[0.0, 0.99\]"),
    ({"sparsity": "lots"}, "is not valid; expected a number"),
    ({"scope": "galaxy"}, "expected one of layer, global"),
    ({"bogus": "1"}, "unknown parameter 'bogus'"),
])
def test_bad_params_name_the_input(params, message):
    with pytest.raises(InputError, match=message):
        recipe(("prune-l1", params)).validate()


def test_unknown_optimization_lists_known_ones():
    with pytest.raises(InputError, match=r"^turbo: unknown optimization; expected one of: .*prune-l1"):
        recipe(("turbo", {})).validate()


def test_order_prune_before_quantize():
    recipe(("prune-l1", {}), ("int8-dynamic", {})).validate()
    with pytest.raises(InputError, match="prune-l1: must come before int8-dynamic"):
        recipe(("int8-dynamic", {}), ("prune-l1", {})).validate()


def test_exclusive_and_conflicting_combinations_rejected():
    with pytest.raises(InputError, match="cannot be combined with fp16"):
        recipe(("fp16", {}), ("bf16", {})).validate()
    with pytest.raises(InputError, match="int8-dynamic: cannot be combined with bf16"):
        recipe(("bf16", {}), ("int8-dynamic", {})).validate()


def test_device_and_task_compatibility():
    with pytest.raises(InputError, match="does not run on cuda"):
        recipe(("int8-dynamic", {}), device="cuda").validate()
    with pytest.raises(InputError, match="unknown task"):
        recipe().validate(task="vision")


def test_bench_limits_checked():
    with pytest.raises(InputError, match="^0: out of range") as exc:
        recipe(bench=BenchSettings(batch=0)).validate()
    assert exc.value.param == "batch"


def test_round_trip_dict():
    r = recipe(("prune-l1", {"sparsity": 0.3})).validate()
    again = Recipe.from_dict(r.to_dict())
    assert again.to_dict() == r.to_dict()


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(InputError, match="unknown key 'colour'"):
        Recipe.from_dict({"model": {"ref": "x"}, "bench": {"colour": 1}})


def test_every_registered_optimization_describes_itself():
    specs = optimizations.all_specs()
    assert {"fp16", "bf16", "int8-dynamic", "prune-l1"} <= {s.name for s in specs}
    for s in specs:
        d = s.describe()
        assert d["summary"] and d["stage"] in optimizations.STAGES
        for p in s.params:
            assert p.help, f"{s.name}.{p.name} has no help text"
            # the default must pass the parameter's own validation
            assert p.coerce(s.name, p.default) == p.default


def test_device_map_placement_is_validated():
    def rec(dm, opts=(), device="cuda"):
        return Recipe(ModelSpec("demo:smollm2", device_map=dm), [OptStep(n) for n in opts], device=device)

    assert rec("balanced", ["bf16", "attention"]).validate(task="causal-lm").model.device_map == "balanced"
    with pytest.raises(InputError, match="^everywhere: unknown placement") as exc:
        rec("everywhere").validate()
    assert exc.value.param == "device_map"
    with pytest.raises(InputError, match="expected device cuda or auto, not cpu"):
        rec("auto", device="cpu").validate()
    with pytest.raises(InputError, match="^int8-weight-only: not supported with a device_map") as exc:
        rec("auto", ["int8-weight-only"]).validate(task="causal-lm")
    assert exc.value.param == "opt"
    d = rec("auto").to_dict()
    assert d["model"]["device_map"] == "auto" and Recipe.from_dict(d).model.device_map == "auto"


def test_device_map_needs_cuda(tmp_path):
    from workbench.core.models import load

    with pytest.raises(InputError, match="^auto: needs CUDA GPUs") as exc:
        load("demo:minilm", None, "cpu", device_map="auto")
    assert exc.value.param == "device_map"
