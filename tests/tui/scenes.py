"""Deterministic app states for snapshot tests: no jobs, no clocks, no live numbers — canned events and a canned
report (a real tiny-llama run, recorded once) fed through the same pane methods the app's event handlers use."""

from __future__ import annotations

import copy

from tests.tui.helpers import canned_report, fast_app
from workbench.core.recipe import ModelSpec, OptStep, Recipe
from workbench.tui.panes.model import ModelPane
from workbench.tui.panes.monitor import MonitorPane
from workbench.tui.panes.progress_log import LogPane, ProgressPane, planned_stages

from workbench.core.optimizations.base import OptSpec, Param

MODEL = "tests/tui/fixtures/llama-config"  # relative: the snapshot tests run from the repository root
CREATED = "2025-06-01T12:00:00+00:00"


def _noop(model, params, ctx):  # pragma: no cover - snapshots never apply anything
    return {}


# A frozen registry for snapshots: the real one grows and its texts change as optimizations are added; these
# keep the shape (families, typed parameters, a conflict, a device limit) so the screens stay comparable.
FROZEN_SPECS = (
    OptSpec("prune-l1", "pruning", "prune", "Unstructured L1 magnitude pruning of Linear weights.",
            (Param("sparsity", float, 0.5, "fraction of weights set to zero", min=0.0, max=0.99),
             Param("scope", str, "layer", "layer or global", choices=("layer", "global"))), _noop),
    OptSpec("bf16", "precision", "precision", "Cast weights and activations to bfloat16.", (), _noop,
            exclusive_group="precision"),
    OptSpec("fp16", "precision", "precision", "Cast weights and activations to float16.", (), _noop,
            exclusive_group="precision", notes="On CPU, fp16 matmuls are often slower than fp32."),
    OptSpec("int8-dynamic", "quantization", "quantize", "Dynamic INT8 quantization of Linear layers.",
            (Param("backend", str, "torch.ao", "torch.ao or torchao", choices=("torch.ao", "torchao")),
             Param("skip_head", bool, True, "leave the output head in full precision")), _noop,
            devices=("cpu",), exportable="custom", conflicts=("fp16", "bf16"),
            extra={"conflict_reason": "it quantizes from float32 Linear layers"}),
    OptSpec("graph-decode", "runtime", "compile", "Static KV cache and the decode step as one CUDA graph.",
            (Param("max_len", int, 0, "static cache length; 0 = from the benchmark", min=0, max=131072),),
            _noop, tasks=("causal-lm",)),
)


def freeze_registry(monkeypatch) -> None:
    from workbench.core import optimizations
    from workbench.core.errors import InputError

    by_name = {s.name: s for s in FROZEN_SPECS}

    def get(name):
        if name not in by_name:
            raise InputError(f"--opt {name}: unknown optimization; expected one of: {', '.join(by_name)}")
        return by_name[name]

    monkeypatch.setattr(optimizations, "all_specs", lambda: list(FROZEN_SPECS))
    monkeypatch.setattr(optimizations, "get", get)


def make_app():
    return fast_app(auto_inspect=False)


def samples(n: int = 40) -> list[dict]:
    """Monitor readings shaped like the job's ``sample`` events, with a fixed pattern."""
    out = []
    for i in range(n):
        out.append({"type": "sample", "cpu_percent": 60 + (i * 37) % 130, "system_cpu_percent": 50 + (i * 11) % 50,
                    "rss_mb": 300 + i * 2.5, "sys_mem_used_mb": 2000 + (i * 13) % 200, "sys_mem_total_mb": 24105,
                    "gpus": [{"index": 0, "name": "Example GPU", "util_percent": (i * 23) % 100,
                              "mem_used_mb": 1000 + i * 10, "mem_total_mb": 81559, "temp_c": 40 + i % 7,
                              "power_w": None}]})
    return out


async def ready(pilot):
    while not pilot.app.ready:
        await pilot.pause(0.05)
    return pilot.app


async def setup_scene(pilot) -> None:
    app = await ready(pilot)
    assert app.load_model(MODEL)
    await pilot.pause()
    app.pane(ModelPane).show_model(canned_report()["model"])
    app.toggle_optimization("int8-dynamic")
    await pilot.pause()
    app.main_screen.set_focus(app.main_screen.query_one("#opt-int8-dynamic"))
    await pilot.pause()


async def live_scene(pilot) -> None:
    app = await ready(pilot)
    assert app.load_model(MODEL)
    app.toggle_optimization("int8-dynamic")
    await pilot.pause()
    recipe = Recipe(ModelSpec(MODEL), [OptStep("int8-dynamic", {})])
    progress = app.pane(ProgressPane)
    progress.start(planned_stages(recipe, artifact=True))
    for stage in ("loading", "baseline: benchmarking", "baseline: evaluating", "applying int8-dynamic"):
        progress.update(stage, 1.0)
    progress.update("optimized: benchmarking", 0.4)
    monitor = app.pane(MonitorPane)
    for s in samples():
        monitor.add_sample(s)
    monitor.set_status("live readings of the job process", "green")
    monitor.redraw()
    await pilot.pause()
    monitor.redraw()  # GPU meters mount on the first redraw and fill on the second
    log = app.pane(LogPane)
    log.write(f"run: {MODEL} · int8-dynamic · session example")
    log.write("loaded LlamaForCausalLM (2.0 M params, float32, task causal-lm) on cpu in 2.6 s")
    log.write("applied int8-dynamic in 0.0 s")
    log.write("fp16 on CPU: many CPU kernels have no fast fp16 path", "warning")
    app.action_show_tab("run")
    await pilot.pause()


async def results_scene(pilot) -> None:
    app = await ready(pilot)
    assert app.load_model(MODEL)
    await pilot.pause()
    app.show_report(canned_report(), 1)
    app.action_show_tab("results")
    await pilot.pause()


def _session(app, name: str, runs: list[dict]):
    session = app.store.create(name, Recipe(ModelSpec(MODEL), [OptStep("int8-dynamic", {})]), {})
    session.created = CREATED
    session.save()
    for r in runs:
        session.add_run(r)
    return session


def variants() -> list[dict]:
    """Three runs of the canned report with different, fixed outcomes."""
    base = canned_report()
    runs = []
    for i, (speed, size, p50, agree) in enumerate(((0.86, 0.97, None, None), (1.42, 0.51, 4.1, 0.9375),
                                                   (1.05, 1.0, 5.6, 1.0)), 1):
        r = copy.deepcopy(base)
        r["id"] = i
        r["speedup"], r["size_ratio"] = speed, size
        if p50:
            r["optimized"]["latency_ms"]["p50"] = p50
        if agree is not None:
            r["accuracy"]["next_token_agreement"].update(value=agree, delta=agree - 1.0)
        if i == 2:
            r["optimizations"] = [{"name": "prune-l1", "params": {"sparsity": 0.3}},
                                  {"name": "int8-dynamic", "params": {}}]
        if i == 3:
            r["optimizations"] = [{"name": "bf16", "params": {}}]
        runs.append(r)
    return runs


async def sessions_scene(pilot) -> None:
    app = await ready(pilot)
    _session(app, "llama-int8", variants())
    _session(app, "empty-session", [])
    await pilot.press("f3")
    await pilot.pause()


async def compare_scene(pilot) -> None:
    app = await ready(pilot)
    _session(app, "llama-int8", variants())
    assert app.open_session("llama-int8")
    app.clear_notifications()
    await pilot.press("escape", "c")
    await pilot.pause()
    await pilot.press("s", "down", "space", "down", "space")
    await pilot.pause()


async def help_scene(pilot) -> None:
    await ready(pilot)
    await pilot.press("f1")
    await pilot.pause()
