"""Command-line arguments shared by `optbench run` and `optbench tune` (torch-free)."""

from __future__ import annotations

import argparse


def add_bench_eval_args(p: argparse.ArgumentParser, suffix: str = "", eval_none: bool = True) -> None:
    """The benchmark and evaluation flags (they fill BenchSettings and EvalSettings)."""
    b = p.add_argument_group("benchmark" + suffix)
    b.add_argument("--batch", type=int)
    b.add_argument("--seq-len", type=int, help="prompt tokens (causal LM) or input tokens (encoder)")
    b.add_argument("--new-tokens", type=int, help="generated tokens per timed call (causal LM)")
    b.add_argument("--warmup", type=int)
    b.add_argument("--min-iters", type=int)
    b.add_argument("--min-seconds", type=float)
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
