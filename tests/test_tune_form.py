"""A tune's settings from plain front-end values (core/tune/form.py): one set of checks for the CLI and the TUI."""

import dataclasses

import pytest

from tests.conftest import fast_recipe
from workbench.core.errors import InputError
from workbench.core.tune import form


def test_tune_config_from_strings_and_from_numbers_is_the_same():
    recipe = fast_recipe("demo:minilm", opts=[("bf16", {})])
    typed = form.tune_config(recipe, objective="size", max_accuracy_drop="cosine=0.05", budget="2m",
                             trial_timeout="30s", memory_mb="512", max_trials="3", min_gain="10",
                             max_contention="50", max_space="20", opts="bf16, prune-l1")
    parsed = form.tune_config(recipe, objective="size", max_accuracy_drop="cosine=0.05", budget="2m",
                              trial_timeout="30s", memory_mb=512.0, max_trials=3, min_gain=10.0,
                              max_contention=50.0, max_space=20, opts=["bf16", "prune-l1"])
    assert dataclasses.asdict(typed) == dataclasses.asdict(parsed)
    assert (typed.budget_s, typed.trial_timeout_s, typed.memory_mb, typed.max_trials, typed.max_space) == \
        (120.0, 30.0, 512.0, 3, 20)
    assert (typed.min_gain, typed.contention_limit, typed.opts) == (0.1, 0.5, ["bf16", "prune-l1"])
    assert typed.recipe.optimizations == [] and typed.accuracy.per_metric["cosine_to_baseline"].value == 0.05
    defaults = form.tune_config(recipe)
    assert (defaults.objective, defaults.budget_s, defaults.opts, defaults.memory_mb, defaults.max_trials) == \
        ("latency", 1200.0, None, None, None)


@pytest.mark.parametrize("field,value,starts", [
    ("objective", "speed", "speed: unknown objective"),
    ("max_accuracy_drop", "5x", "5x: '5x' is not a limit"),
    ("budget", "10q", "10q: not a duration"),
    ("trial_timeout", "0", "0: not a duration"),
    ("memory_mb", "-1", "-1.0: expected a number of MB > 0"),
    ("memory_mb", "lots", "lots: expected a number of MB > 0"),
    ("max_trials", "0", "0: expected an integer >= 1"),
    ("max_trials", "1.5", "1.5: expected an integer >= 1"),
    ("min_gain", "2000", "2000.0: expected a percentage in [0, 1000]"),
    ("max_contention", "-5", "-5.0: expected a percentage in [0, 100]"),
    ("max_space", 0, "0: expected an integer >= 1"),
    ("opts", "bf16,nope", "nope: unknown optimization"),
    ("opts", " , ", "' , ': empty"),
])
def test_each_field_names_the_value_and_the_parameter_never_a_flag(field, value, starts):
    with pytest.raises(InputError) as exc:
        form.parse_field(field, value)
    assert exc.value.message.startswith(starts) and exc.value.param == field
    assert "--" not in exc.value.message
    with pytest.raises(InputError) as whole:
        form.tune_config(fast_recipe("demo:minilm"), **{field: value})
    assert whole.value.message == exc.value.message and whole.value.param == field


def test_blank_optional_fields_are_not_given_and_the_recipe_is_checked():
    assert [form.parse_field(f, v) for f, v in (("memory_mb", ""), ("max_trials", None), ("trial_timeout", ""),
                                                ("opts", None))] == [None, None, None, None]
    with pytest.raises(InputError) as exc:
        form.tune_config(dataclasses.replace(fast_recipe("demo:minilm"), eval=dataclasses.replace(
            fast_recipe("x").eval, source="none")))
    assert exc.value.param == "eval" and exc.value.message.startswith("none: a tune needs accuracy")
    with pytest.raises(InputError) as exc:
        form.tune_config(fast_recipe("demo:nope"))
    assert exc.value.param == "model" and exc.value.message.startswith("demo:nope: unknown demo model")
