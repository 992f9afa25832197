import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Every test gets its own cache and sessions folder: nothing touches the user's.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OPTBENCH_SESSIONS", str(tmp_path / "sessions"))


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A working directory for CLI runs, with its own sessions folder and a file that must survive."""
    d = tmp_path / "work"
    d.mkdir()
    (d / "notes.txt").write_text("keep me")
    monkeypatch.setenv("OPTBENCH_SESSIONS", str(d / "sessions"))
    return d


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    from tests.fixtures.tiny import build_llama

    return build_llama(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    from tests.fixtures.tiny import build_bert

    return build_bert(tmp_path_factory.mktemp("tiny") / "bert")


@pytest.fixture(scope="session")
def tiny_bert_cls(tmp_path_factory) -> Path:
    from tests.fixtures.tiny import build_bert

    return build_bert(tmp_path_factory.mktemp("tiny") / "bert_cls", classes=3)


# Fast bench/eval settings for tests (the numbers are not the point; their presence and shape are).
FAST = ["--warmup", "1", "--min-iters", "2", "--min-seconds", "0", "--seq-len", "16", "--new-tokens", "4",
        "--token-budget", "64", "--window", "32", "--max-samples", "8", "--monitor-hz", "20"]


def fast_recipe(ref: str, opts=(), **model_kw):
    from workbench.core.recipe import BenchSettings, EvalSettings, ModelSpec, OptStep, Recipe

    return Recipe(
        ModelSpec(ref, **model_kw),
        [OptStep(n, dict(p)) for n, p in opts],
        BenchSettings(warmup=1, min_iters=2, min_seconds=0.0, seq_len=16, new_tokens=4, monitor_hz=20),
        EvalSettings(token_budget=64, window=32, max_samples=8),
        device="cpu",
    )
