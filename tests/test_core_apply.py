"""The one apply loop: an optimization's result as a typed Applied(model, report) or as a dict with "_model"."""

from dataclasses import dataclass
from types import SimpleNamespace

from workbench.core import apply


@dataclass
class Applied:  # shaped like optimizations.base.Applied
    model: object
    report: dict


def test_unpack_applied_accepts_both_forms():
    new = object()
    assert apply.unpack_applied(Applied(new, {"bytes": 3})) == (new, {"bytes": 3})
    assert apply.unpack_applied({"_model": new, "bytes": 3}) == (new, {"bytes": 3})
    assert apply.unpack_applied({"bytes": 3}) == (None, {"bytes": 3})
    assert apply.unpack_applied(None) == (None, {})


def test_apply_steps_replaces_the_model_and_reports_each_step(monkeypatch):
    calls = []

    def make(name, result):
        def fn(model, params, ctx):
            calls.append((name, model, dict(params), ctx.extra["generate_kwargs"]))
            ctx.progress(0.5, step=1)
            ctx.log(f"{name} log")
            return result
        return SimpleNamespace(name=name, exportable=True, apply=fn)

    specs = {"a": make("a", {"_model": "student", "x": 1}), "b": make("b", Applied("compiled", {"y": 2}))}
    monkeypatch.setattr(apply.optimizations, "get", specs.__getitem__)
    loaded = SimpleNamespace(model="base", device="cpu", task="encoder", tokenizer=None, generate_kwargs={"k": 1})
    seen = []
    steps = [SimpleNamespace(name="a", params={"p": 1}), SimpleNamespace(name="b", params={})]
    reports = apply.apply_steps(loaded, steps, log=lambda t: seen.append(("log", t)),
                                on_step=lambda n, f: seen.append(("step", n, f)),
                                on_progress=lambda n, f, **kw: seen.append(("progress", n, f, kw)),
                                on_applied=lambda r: seen.append(("applied", r["name"])))
    assert loaded.model == "compiled" and [c[1] for c in calls] == ["base", "student"]
    assert [(r["name"], r["params"], r["exportable"]) for r in reports] == [("a", {"p": 1}, True), ("b", {}, True)]
    assert reports[0]["x"] == 1 and reports[1]["y"] == 2 and "_model" not in reports[0]
    assert all(r["seconds"] >= 0 for r in reports) and calls[0][3] == {"k": 1}
    assert seen == [("step", "a", 0.0), ("progress", "a", 0.5, {"step": 1}), ("log", "a log"), ("applied", "a"),
                    ("step", "b", 0.5), ("progress", "b", 0.5, {"step": 1}), ("log", "b log"), ("applied", "b")]
