"""Command-line arguments shared by the commands, and the Recipe they build (torch-free)."""

from __future__ import annotations

import argparse

TASKS = ("causal-lm", "encoder", "seq-cls")


def add_bench_eval_args(p: argparse.ArgumentParser, suffix: str = "", eval_none: bool = True) -> None:
    """The benchmark and evaluation flags (they fill BenchSettings and EvalSettings)."""
    b = p.add_argument_group("benchmark" + suffix)
    b.add_argument("--batch", type=int)
    b.add_argument("--seq-len", type=int, help="prompt tokens (causal LM) or input tokens (encoder)")
    b.add_argument("--new-tokens", type=int, help="generated tokens per timed call (causal LM)")
    b.add_argument("--warmup", type=int)
    b.add_argument("--min-iters", type=int)
    b.add_argument("--min-seconds", type=float)
    b.add_argument("--max-seconds", type=float,
                   help="cap each benchmark at this many seconds, warm-up included; it ends early with what it has "
                        "(at least one timed call) and the report says stopped_early")
    b.add_argument("--monitor-hz", type=float, help="background monitor sampling rate")
    e = p.add_argument_group("evaluation" + suffix)
    e.add_argument("--eval", dest="eval_source", metavar="SRC",
                   help=f"builtin (default), {'none, ' if eval_none else ''}a .txt/.jsonl/.csv file, or hf:NAME[:CONFIG]")
    e.add_argument("--text-column")
    e.add_argument("--label-column")
    e.add_argument("--query-column")
    e.add_argument("--document-column")
    e.add_argument("--split")
    e.add_argument("--token-budget", type=int, help="causal LM: tokens scored")
    e.add_argument("--window", type=int, help="causal LM: tokens per scored window")
    e.add_argument("--max-samples", type=int, help="encoder/classifier: texts evaluated")


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    """Model, optimizations, device and the bench/eval flags: everything ``recipe_from_args`` reads."""
    p.add_argument("--model", help="demo:smollm2, demo:minilm, a local folder, a .gguf file or a Hugging Face id")
    p.add_argument("--opt", action="append", default=[], metavar="NAME[:k=v,...]",
                   help="an optimization (repeatable, applied in order); see `optbench optimizations`")
    p.add_argument("--task", choices=TASKS, help="override the detected task")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--device-map", choices=("auto", "balanced", "balanced_low_0", "sequential"),
                   help="spread the model over every visible GPU (accelerate); with precision/runtime optimizations")
    p.add_argument("--tp", type=int, metavar="N",
                   help="tensor parallelism: split every layer over N processes under torchrun (one per GPU; gloo "
                        "processes with --device cpu); with bf16/fp16, kv-cache, attention and compile")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow a model's own Python code to run (off unless you ask)")
    add_bench_eval_args(p)


def add_sessions_dir_arg(p: argparse.ArgumentParser) -> None:
    """``--sessions-dir`` also after the command (the top-level option is the same)."""
    p.add_argument("--sessions-dir", default=argparse.SUPPRESS, help="where sessions live")


def recipe_from_args(args, base=None):
    """A Recipe from CLI flags, on top of a session's recipe when one is given. Validated, torch-free."""
    from workbench.core import optimizations
    from workbench.core.errors import InputError
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
    if getattr(args, "tp", None) is not None:
        recipe.model.tp = args.tp
    if args.device:
        recipe.device = args.device
    if args.opt:
        recipe.optimizations = [OptStep(*optimizations.parse_opt_arg(o)) for o in args.opt]
    bench = BenchSettings(**vars(recipe.bench))
    for name in ("batch", "seq_len", "new_tokens", "warmup", "min_iters", "min_seconds", "max_seconds", "monitor_hz"):
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


def open_named_session(store, name: str, model: str | None):
    """The session called ``name`` if it exists (None for a new one), checked against ``--model``."""
    from workbench.core.errors import InputError
    from workbench.core.session import check_name

    check_name(name)
    store.path(name)
    if not store.exists(name):
        return None
    session = store.open(name)
    if model and model != session.recipe.model.ref:
        raise InputError(f"--session {name}: holds model {session.recipe.model.ref}; expected "
                         f"--model {session.recipe.model.ref} or a new session name")
    return session
