"""optbench's command line. No arguments: the TUI. Subcommands: the same engine, headless.

Exit codes: 0 ok, 1 the job failed, 2 bad usage or input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from workbench import __version__
from workbench.cliargs import add_bench_eval_args
from workbench.core.errors import InputError, OptbenchError

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        self.exit(EXIT_INPUT, f"optbench: error: {message}\n")


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="demo:smollm2, demo:minilm, a local folder, a .gguf file or a Hugging Face id")
    p.add_argument("--opt", action="append", default=[], metavar="NAME[:k=v,...]",
                   help="an optimization (repeatable, applied in order); see `optbench optimizations`")
    p.add_argument("--task", choices=("causal-lm", "encoder", "seq-cls"), help="override the detected task")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--device-map", choices=("auto", "balanced", "balanced_low_0", "sequential"),
                   help="spread the model over every visible GPU (accelerate); with precision/runtime optimizations")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow a model's own Python code to run (off unless you ask)")
    add_bench_eval_args(p)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="optbench", description="Make Transformer models faster and smaller, measured truthfully. "
                                             "With no command, opens the terminal workbench.")
    p.add_argument("--version", action="version", version=f"optbench {__version__}")
    p.add_argument("--sessions-dir", help="where sessions live (default ./sessions or $OPTBENCH_SESSIONS)")
    p.add_argument("--no-mouse", action="store_true", help="TUI: do not capture the mouse")
    p.add_argument("--model", dest="tui_model", help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    run = sub.add_parser("run", help="baseline + optimized: bench, evaluate, report (and keep a session)")
    _add_recipe_args(run)
    run.add_argument("--session", help="keep the run in sessions/NAME (re-runs its recipe when --model is omitted)")
    run.add_argument("--no-artifact", action="store_true", help="with --session: do not save the optimized model")
    run.add_argument("--export", metavar="DIR", help="also export the optimized model to DIR (verified)")
    run.add_argument("--json", action="store_true", help="print exactly one JSON document on stdout")

    s = sub.add_parser("sessions", help="list, show, rename or delete sessions")
    s.add_argument("action", nargs="?", default="list", choices=("list", "show", "delete", "rename"))
    s.add_argument("name", nargs="?")
    s.add_argument("new_name", nargs="?")
    s.add_argument("--yes", action="store_true", help="delete without asking")
    s.add_argument("--json", action="store_true")

    o = sub.add_parser("optimizations", help="every registered optimization with its parameters")
    o.add_argument("--json", action="store_true")

    x = sub.add_parser("export", help="copy a session's artifact to a folder and verify it reloads")
    x.add_argument("name")
    x.add_argument("--out", required=True)
    x.add_argument("--json", action="store_true")

    i = sub.add_parser("info", help="hardware and library versions")
    i.add_argument("--json", action="store_true")
    sv = sub.add_parser("serve", help="the workbench in a browser (textual-serve), bound to 127.0.0.1")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    for sp in (run, s, x, sv):
        sp.add_argument("--sessions-dir", default=argparse.SUPPRESS, help="where sessions live")
    from workbench.commands_catalogue import add_parsers

    from workbench.commands_tune import add_parsers as add_tune_parsers

    p.set_defaults(catalogue_handlers={**add_parsers(sub), **add_tune_parsers(sub)})  # recommend, sweep, tune
    verbose_help = "show library messages (torchao, torch, transformers) that are otherwise kept in a log file"
    p.add_argument("-v", "--verbose", action="store_true", help=verbose_help)
    for sp in sub.choices.values():  # also after the command: `optbench run -v ...`
        sp.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose_help)
    return p


def main(argv: list[str] | None = None) -> int:
    from workbench.core import quiet

    args = build_parser().parse_args(argv)
    if args.verbose:
        os.environ[quiet.VERBOSE_ENV] = "1"  # job processes inherit it
    quiet.quiet_libraries()
    if args.sessions_dir:
        os.environ["OPTBENCH_SESSIONS"] = args.sessions_dir
    try:
        if args.command is None:
            from workbench.tui.app import run_app

            return run_app(model=args.tui_model, mouse=not args.no_mouse)
        handler = {"run": cmd_run, "sessions": cmd_sessions, "optimizations": cmd_optimizations,
                   "export": cmd_export, "info": cmd_info, "serve": cmd_serve,
                   **args.catalogue_handlers}[args.command]
        return handler(args)
    except OptbenchError as exc:
        _fail(exc.message, exc.hint, getattr(args, "json", False), exc.kind)
        return exc.exit_code
    except KeyboardInterrupt:
        print("optbench: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _fail(message: str, hint: str, as_json: bool, kind: str) -> None:
    print(f"optbench: error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    if as_json:
        print(json.dumps({"ok": False, "error": {"kind": kind, "message": message, "hint": hint}}))


# ---------------------------------------------------------------- run

def recipe_from_args(args, base=None):
    """A Recipe from CLI flags, on top of a session's recipe when one is given. Validated, torch-free."""
    from workbench.core import optimizations
    from workbench.core.recipe import BenchSettings, EvalSettings, ModelSpec, OptStep, Recipe

    if base is None:
        if not args.model:
            raise InputError("--model: missing; expected demo:smollm2, demo:minilm, a folder, a .gguf file or an "
                             "id (or --session NAME of a saved session)")
        base = Recipe(ModelSpec(args.model))
    recipe = Recipe(base.model, list(base.optimizations), base.bench, base.eval, base.device)
    if args.model:
        recipe.model = ModelSpec(args.model, revision=None)
    if args.task:
        recipe.model.task = args.task
    if args.trust_remote_code:
        recipe.model.trust_remote_code = True
    if getattr(args, "device_map", None):
        recipe.model.device_map = args.device_map
    if args.device:
        recipe.device = args.device
    if args.opt:
        recipe.optimizations = [OptStep(*optimizations.parse_opt_arg(o)) for o in args.opt]
    bench = BenchSettings(**vars(recipe.bench))
    for name in ("batch", "seq_len", "new_tokens", "warmup", "min_iters", "min_seconds", "monitor_hz"):
        if getattr(args, name, None) is not None:
            setattr(bench, name, getattr(args, name))
    ev = EvalSettings(**vars(recipe.eval))
    for flag, field_name in {"eval_source": "source", "text_column": "text_column", "label_column": "label_column",
                             "query_column": "query_column", "document_column": "document_column",
                             "split": "split", "token_budget": "token_budget", "window": "window",
                             "max_samples": "max_samples"}.items():
        if getattr(args, flag, None) is not None:
            setattr(ev, field_name, getattr(args, flag))
    recipe.bench, recipe.eval = bench, ev
    return recipe


def precheck(recipe) -> "Recipe":
    """Every check that needs no torch: model reference, optimizations, ranges, eval file. Raises InputError."""
    from workbench.core import data, modelref

    ref = modelref.resolve(recipe.model.ref)
    validated = recipe.validate(task=recipe.model.task or ref.task_hint)
    if validated.eval.source not in ("builtin", "none") and not validated.eval.source.startswith("hf:"):
        task = recipe.model.task or ref.task_hint
        if task is None and ref.path:
            from workbench.core.modelref import task_from_config_json

            task = task_from_config_json(ref.path)
        data.load_eval(validated.eval, task or "causal-lm")
    return validated


def hardware_warning(recipe) -> str | None:
    """bf16 (cast) on a CPU without native bf16 matmuls: said before the run, which still goes ahead."""
    from workbench.core.measure import nvml
    from workbench.core.measure.cpu import precision_warning

    names = [s.name for s in recipe.optimizations if not (s.name == "bf16" and s.params.get("mode") == "autocast")]
    if "bf16" not in names:
        return None  # the only case warned about; no NVML start-up for every other run
    device = recipe.device or "auto"
    if device == "auto":
        device = "cuda" if nvml.devices() else "cpu"
    return precision_warning(names, device)


def cmd_run(args) -> int:
    from workbench.core.jobs.client import Job
    from workbench.cliargs import open_named_session
    from workbench.core.session import SessionStore

    store = SessionStore()
    session = open_named_session(store, args.session, args.model) if args.session else None
    base = session.recipe if session is not None else None
    recipe = precheck(recipe_from_args(args, base))
    if args.export:
        out = Path(args.export)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise InputError(f"--export {args.export}: exists and is not an empty folder; expected a new folder")
    artifact_dir = None
    if args.export:
        artifact_dir = str(Path(args.export).resolve())
    elif args.session and not args.no_artifact:
        artifact_dir = str(store.path(args.session) / "artifact")

    shown = set()
    warning = hardware_warning(recipe)
    if warning:  # before minutes of baseline, not after
        print(f"optbench: warning: {warning}", file=sys.stderr)
        shown.add(warning)
    job = Job({"job": "run", "recipe": recipe.to_dict(), "artifact_dir": artifact_dir})
    view = _Progress(enabled=sys.stderr.isatty() and not args.json)
    final, error = None, None
    try:
        for event in job.events():
            kind = event["type"]
            if kind == "progress":
                view.update(event["stage"], event.get("fraction", 0.0))
            elif kind == "log" and event.get("level") in ("warning", "error") and not args.json \
                    and event["text"] not in shown:
                view.log(event["text"].splitlines()[-1] if event.get("level") == "error" else event["text"])
            elif kind == "result" and event.get("phase") == "final":
                final = event["report"]
                if args.session:
                    if session is None:
                        session = store.create(args.session, recipe, final.get("environment"))
                    else:
                        session.recipe, session.environment = recipe, final.get("environment") or {}
                        session.save()
                    session.add_run({"id": len(session.results.get("runs", [])) + 1, **final})
            elif kind == "error":
                error = event
    except KeyboardInterrupt:
        view.stop()
        job.cancel()
        _fail("interrupted; the job was cancelled", "", args.json, "cancelled")
        return EXIT_INTERRUPTED
    finally:
        view.stop()
    if error is not None or final is None:
        if args.session and session is None:  # a failed first run leaves no empty session folder behind
            try:
                store.path(args.session).rmdir()
            except OSError:
                pass
        error = error or {"kind": "crashed", "message": "the job ended without a result", "hint": ""}
        _fail(error["message"], error.get("hint", ""), args.json, error["kind"])
        return EXIT_INPUT if error["kind"] == "input" else EXIT_FAILED
    if args.export and final.get("export") and not final["export"].get("verified"):
        _fail(f"--export {args.export}: {final['export'].get('error')}", "", False, "export")
    if args.json:
        print(json.dumps(final, default=str))
    else:
        from workbench.report import print_report

        print_report(final, session=args.session)
    return EXIT_OK


class _Progress:
    """Stage progress on stderr when it is a terminal (rich); silent otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress = None
        self.task = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description:<32}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                                     TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self.progress.start()
            self.task = self.progress.add_task("starting", total=1.0)

    def update(self, stage: str, fraction: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=stage, completed=fraction)

    def log(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(f"[yellow]{text}[/]")
        else:
            print(text, file=sys.stderr)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


# ---------------------------------------------------------------- other commands

def cmd_sessions(args) -> int:
    from workbench.core.session import SessionStore

    store = SessionStore()
    if args.action == "list":
        rows = store.list()
        if args.json:
            print(json.dumps(rows))
            return EXIT_OK
        from workbench.report import print_sessions

        print_sessions(rows, store.root)
        return EXIT_OK
    if not args.name:
        raise InputError(f"sessions {args.action}: missing NAME; expected a session name")
    if args.action == "show":
        session = store.open(args.name)
        if args.json:
            print(json.dumps({**session.summary(), "recipe": session.recipe.to_dict(),
                              "environment": session.environment, "results": session.results}, default=str))
        else:
            from workbench.report import print_session

            print_session(session)
        return EXIT_OK
    if args.action == "delete":
        if not store.exists(args.name):
            store.open(args.name)  # raises the not-found error
        if not args.yes:
            if not sys.stdin.isatty():
                raise InputError(f"sessions delete {args.name}: needs --yes when not at a terminal")
            if input(f"delete session {args.name!r} and its artifact? [y/N] ").strip().lower() != "y":
                print("kept")
                return EXIT_OK
        store.delete(args.name)
        print(f"deleted {args.name}")
        return EXIT_OK
    if not args.new_name:
        raise InputError("sessions rename: missing NEW name")
    store.rename(args.name, args.new_name)
    print(f"renamed {args.name} -> {args.new_name}")
    return EXIT_OK


def cmd_optimizations(args) -> int:
    from workbench.core import optimizations

    specs = [s.describe() for s in optimizations.all_specs()]
    if args.json:
        print(json.dumps(specs))
        return EXIT_OK
    from workbench.report import print_optimizations

    print_optimizations(specs)
    return EXIT_OK


def cmd_export(args) -> int:
    from workbench.core.jobs.client import Job
    from workbench.core.session import SessionStore

    store = SessionStore()
    session = store.open(args.name)
    if not session.artifact_dir.is_dir():
        raise InputError(f"session {args.name}: has no artifact; expected a session whose run saved one "
                         f"(run without --no-artifact)")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out {args.out}: exists and is not an empty folder; expected a new folder")
    job = Job({"job": "verify", "src": str(session.artifact_dir), "out": str(out.resolve())})
    result, error = None, None
    for event in job.events():
        if event["type"] == "result":
            result = event["report"]
        elif event["type"] == "error":
            error = event
    if error or result is None:
        error = error or {"message": "the export job ended without a result", "hint": "", "kind": "crashed"}
        _fail(error["message"], error.get("hint", ""), args.json, error["kind"])
        return EXIT_INPUT if error["kind"] == "input" else EXIT_FAILED
    if args.json:
        print(json.dumps(result))
    else:
        print(f"exported {args.name} to {result['path']} ({result['bytes_on_disk'] / 1e6:.1f} MB); reloaded and "
              f"verified: max relative error {result['max_rel_error']:.2e} (tolerance {result['tolerance']:.0e})")
    return EXIT_OK


def cmd_serve(args) -> int:
    from workbench.tui.serve import serve

    return serve(args.host, args.port, os.environ.get("OPTBENCH_SESSIONS"))


def cmd_info(args) -> int:
    from workbench.core.measure import nvml
    from workbench.core.measure.env import environment

    import torch  # noqa: F401  (device details need it; `info` is allowed to be heavy)

    env = environment("cuda" if torch.cuda.is_available() else "cpu")
    env["cuda_available"] = torch.cuda.is_available()
    env["nvml_devices"] = nvml.devices()
    try:
        import torchao  # noqa: F401

        env["torchao_importable"] = True
    except Exception:
        env["torchao_importable"] = False
    if args.json:
        print(json.dumps(env))
    else:
        from workbench.report import print_info

        print_info(env)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
