"""Regenerate the README's SVG screenshots of the workbench from a real session on a demo model.

    .venv/bin/python scripts/screenshots.py [--model demo:smollm2] [--out assets] [--size 120x40]
    .venv/bin/python scripts/screenshots.py --tune [--model demo:minilm] [--tune-budget 4m]

It drives the real app headless (Textual's Pilot): loads the model (the inspect job reads it), switches on
int8-dynamic, runs, then a second recipe (prune-l1), and saves ``app.save_screenshot`` SVGs of the setup, live,
results, compare, sessions and help screens, plus the setup screen at 80×24. Sessions and settings live in a
temporary folder; nothing of the user's is touched. About 2–3 minutes on a 2-core CPU with demo:smollm2.

``--tune``: only ``tui-tune.svg``: a real tune from the tune screen (demo:minilm by default, latency within a 1 %
accuracy budget, a few optimizations, a short time budget; a fresh trial cache, so every trial is measured), shot
when it has finished and saved its best recipe. About the time budget plus a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


async def wait_for(pilot, cond, timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"screenshots: timed out waiting for {what}")
        await pilot.pause(0.2)


async def shoot(app, out: Path, name: str) -> None:
    path = app.save_screenshot(filename=f"{name}.svg", path=str(out))
    print(f"wrote {Path(path).relative_to(ROOT) if Path(path).is_relative_to(ROOT) else path}")


async def run_recipe(app, pilot, opts: list[str], live_shot: tuple[Path, str] | None) -> None:
    for name in list(app.wb.enabled):
        app.toggle_optimization(name)
    await pilot.pause()
    for name in opts:
        app.toggle_optimization(name)
    await pilot.pause(0.3)
    app.action_run()
    if app.run_handle is None:
        raise SystemExit(f"screenshots: the run did not start: {app.notices[-1:]}")
    if live_shot:
        progress = app.main_screen.query_one("#progress-pane")
        await wait_for(pilot, lambda: (progress.current or "").startswith("optimized") or not app.run_handle.active,
                       600, "the optimized phase")
        await pilot.pause(1.5)
        await shoot(app, *live_shot)
    await wait_for(pilot, lambda: not app.run_handle.active, 900, "the run to finish")
    await pilot.pause(1.0)
    if app.run_handle.error:
        raise SystemExit(f"screenshots: the run failed: {app.run_handle.error}")


async def main(args) -> None:
    from workbench.core.recipe import BenchSettings, EvalSettings
    from workbench.tui.app import OptbenchApp

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    w, h = (int(v) for v in args.size.split("x"))
    bench = BenchSettings(min_seconds=1.0, new_tokens=16, warmup=1, min_iters=5)
    ev = EvalSettings(token_budget=512, max_samples=32)
    app = OptbenchApp(bench=bench, eval=ev, device="cpu")
    async with app.run_test(size=(w, h)) as pilot:
        await wait_for(pilot, lambda: app.ready, 30, "the app")
        assert app.load_model(args.model), app.notices
        await wait_for(pilot, lambda: app.inspect_handle is None, 300, "the inspect job")
        app.toggle_optimization("int8-dynamic")
        await pilot.pause(0.5)
        app.main_screen.set_focus(app.main_screen.query_one("#opt-int8-dynamic"))
        await pilot.pause(0.3)
        await shoot(app, out, "tui-setup")

        await run_recipe(app, pilot, ["int8-dynamic"], (out, "tui-live"))
        await shoot(app, out, "tui-results")
        await run_recipe(app, pilot, ["prune-l1"], None)

        app.action_compare()
        await pilot.pause(0.5)
        await pilot.press("space", "down", "space")
        await pilot.pause(0.5)
        await shoot(app, out, "tui-compare")
        await pilot.press("escape")
        await pilot.press("f3")
        await pilot.pause(0.5)
        await shoot(app, out, "tui-sessions")
        await pilot.press("escape", "f1")
        await pilot.pause(0.5)
        await shoot(app, out, "tui-help")
        await pilot.press("escape")
    small = OptbenchApp(bench=bench, eval=ev, device="cpu", auto_inspect=False)
    async with small.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: small.ready, 30, "the app")
        small.load_model(args.model)
        small.toggle_optimization("int8-dynamic")
        await pilot.pause(0.5)
        small.main_screen.set_focus(small.main_screen.query_one("#opt-int8-dynamic"))
        await pilot.pause(0.3)
        await shoot(small, out, "tui-setup-80x24")


async def tune_main(args) -> None:
    """A real tune on the tune screen: tui-tune.svg once it has finished."""
    from workbench.core.recipe import BenchSettings, EvalSettings
    from workbench.tui.app import OptbenchApp

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    w, h = (int(v) for v in args.size.split("x"))
    bench = BenchSettings(min_seconds=1.0, warmup=1, min_iters=5)
    ev = EvalSettings(max_samples=32)
    app = OptbenchApp(bench=bench, eval=ev, device="cpu", auto_inspect=False)
    async with app.run_test(size=(w, h)) as pilot:
        await wait_for(pilot, lambda: app.ready, 30, "the app")
        assert app.load_model(args.model), app.notices
        app.action_tune()
        await pilot.pause(0.5)
        screen = app.screen
        for name, value in (("max-accuracy-drop", args.tune_drop), ("budget", args.tune_budget),
                            ("opts", args.tune_opts)):
            screen.query_one(f"#tune-{name}").value = value
        screen.query_one("#tune-objective").value = "latency"
        await pilot.pause(0.3)
        app.action_tune_start()
        if app.tune_handle is None:
            raise SystemExit(f"screenshots: the tune did not start: {app.notices[-1:]}")
        await wait_for(pilot, lambda: not app.tuning, 3600, "the tune to finish")
        await pilot.pause(1.0)
        st = app.tune_state
        if st.status != "done":
            raise SystemExit(f"screenshots: the tune ended {st.status}: {st.error}")
        screen.query_one("#tune-table").focus()
        await pilot.pause(0.5)
        await shoot(app, out, "tui-tune")
        best = st.best or {}
        print(f"tune: {len(st.trials)} trials decided; best {best.get('label')} x{best.get('gain') or 0:.2f}; "
              f"saved in session {st.saved_in}")


async def gpu_main(args) -> None:
    """The GPU panes during a run on a CUDA machine: tui-gpu-live.svg and tui-gpu-results.svg."""
    from workbench.core.recipe import BenchSettings, EvalSettings
    from workbench.tui.app import OptbenchApp

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    w, h = (int(v) for v in args.size.split("x"))
    bench = BenchSettings(min_seconds=6.0, new_tokens=128, warmup=2, min_iters=10, batch=8)
    ev = EvalSettings(token_budget=1024)
    app = OptbenchApp(bench=bench, eval=ev, device="cuda")
    async with app.run_test(size=(w, h)) as pilot:
        await wait_for(pilot, lambda: app.ready, 60, "the app")
        assert app.load_model(args.model), app.notices
        await wait_for(pilot, lambda: app.inspect_handle is None, 300, "the inspect job")
        opts = [o for o in args.opts.split(",") if o]
        await run_recipe(app, pilot, opts, (out, "tui-gpu-live"))
        await shoot(app, out, "tui-gpu-results")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default demo:smollm2 (demo:minilm with --tune)")
    ap.add_argument("--out", default=str(ROOT / "assets"))
    ap.add_argument("--size", default="120x40", help="terminal size of the main screenshots, WxH")
    ap.add_argument("--gpu", action="store_true", help="on a CUDA machine: only the GPU panes during a run")
    ap.add_argument("--opts", default="bf16,graph-decode", help="with --gpu: the optimizations switched on")
    ap.add_argument("--tune", action="store_true", help="only the tune screen after a real tune (tui-tune.svg)")
    ap.add_argument("--tune-opts", default="bf16,int8-dynamic,attention,drop-layers",
                    help="with --tune: the optimizations searched")
    ap.add_argument("--tune-budget", default="4m", help="with --tune: the time budget")
    ap.add_argument("--tune-drop", default="1%", help="with --tune: the accuracy budget")
    cli = ap.parse_args()
    cli.model = cli.model or ("demo:minilm" if cli.tune else "demo:smollm2")
    tmp = tempfile.mkdtemp(prefix="optbench-shots-")
    os.environ.setdefault("OPTBENCH_SESSIONS", f"{tmp}/sessions")
    os.environ["OPTBENCH_CONFIG_DIR"] = f"{tmp}/config"
    os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")
    os.chdir(tmp)  # exports (none here) and relative paths stay out of the repository
    if cli.tune:
        os.environ.setdefault("OPTBENCH_CACHE", f"{tmp}/cache")  # every trial measured, none from a cache
    asyncio.run(gpu_main(cli) if cli.gpu else tune_main(cli) if cli.tune else main(cli))
